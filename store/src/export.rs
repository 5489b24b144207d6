//! The audit log's export (`kakehashi-gateway audit export`) and the offline
//! check of an export (`audit verify --file`): the security officer's copy of
//! the audit log, and the check that a copy can be trusted.
//!
//! An export is a contiguous piece of the hash chain: from the first record
//! at or after `--since` up to (not including) the first record after it at
//! or after `--until`, in `seq` order, ending at the chain head as it was
//! when the export started. Consecutive exports (month by month) therefore
//! tile the chain with no gap and no overlap, even where clocks put two
//! records out of time order. Every field of every record is written,
//! including `seq`, `prev_hash` and `hash`, with `detail` as the exact JSON
//! text that was hashed, so a JSON-lines export can be verified offline with
//! nothing but this program (`audit verify --file`).
//!
//! What the offline check proves: every record's hash matches its content
//! and position, and every record links to the one before it. An export
//! that starts at seq 1 is anchored to the start of the chain; the end is
//! anchored by comparing the last hash with the one printed by the export
//! (or by `audit verify --config` on the gateway, or by the syslog copy):
//! `--last-hash`. Without that anchor, cutting records off the end of a file
//! cannot be detected.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::audit::AuditRecord;
use crate::db::Store;
use crate::localtime::rfc3339;
use crate::sheet::Cell::{Plain, Text};
use crate::sheet::SheetWriter;
use crate::types::Hash256;

/// Records read from the store at once.
const PAGE: u32 = 1000;
/// Progress is reported on stderr every this many records.
const PROGRESS_EVERY: u64 = 100_000;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line; verifiable with `audit verify --file`.
    Jsonl,
    /// Comma-separated values with a header line (for reading; JSON lines for verifying).
    Csv,
}

/// One exported record: every stored field, hashes in hex, `detail` as the
/// exact JSON text that was hashed, plus `time` (`at` in RFC 3339, local
/// offset) for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    /// Position in the chain.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// `at` as RFC 3339 (checked against `at` on verification).
    pub time: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// JSON text exactly as hashed.
    pub detail: String,
    /// The previous record's hash (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// The CSV header line of an export.
pub const CSV_HEADER: &str = "seq,at,time,actor,action,subject,reason,detail,prev_hash,hash";

impl ExportRecord {
    /// The export form of a stored record.
    pub fn new(r: &AuditRecord, utc_offset_secs: i32) -> Self {
        Self {
            seq: r.seq,
            at: r.at,
            time: rfc3339(r.at, utc_offset_secs),
            actor: r.actor.clone(),
            action: r.action.clone(),
            subject: r.subject.clone(),
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            prev_hash: r.prev_hash.to_hex(),
            hash: r.hash.to_hex(),
        }
    }

    /// One JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain strings and integers serialise")
    }

    /// Writes the record as one CSV row. Text that a spreadsheet would run
    /// as a formula is prefixed with `'` (see [`crate::sheet`]).
    pub fn write_csv<W: Write>(&self, w: &mut SheetWriter<W>) -> std::io::Result<()> {
        let (seq, at) = (self.seq.to_string(), self.at.to_string());
        w.row(&[
            Plain(&seq),
            Plain(&at),
            Plain(&self.time),
            Text(&self.actor),
            Text(&self.action),
            Text(&self.subject),
            Text(&self.reason),
            Text(&self.detail),
            Plain(&self.prev_hash),
            Plain(&self.hash),
        ])
    }

    /// Back to a stored record, if the hashes are hex and `time` is `at`.
    fn record(&self) -> Result<AuditRecord, String> {
        let hash = |s: &str| Hash256::from_hex(s).map_err(|e| format!("bad hash {s:?}: {e}"));
        let t = OffsetDateTime::parse(&self.time, &Rfc3339)
            .map_err(|e| format!("bad time {:?}: {e}", self.time))?;
        if t.unix_timestamp() != self.at {
            return Err(format!(
                "time {:?} does not match at {}",
                self.time, self.at
            ));
        }
        Ok(AuditRecord {
            seq: self.seq,
            at: self.at,
            actor: self.actor.clone(),
            action: self.action.clone(),
            subject: self.subject.clone(),
            reason: self.reason.clone(),
            detail: self.detail.clone(),
            prev_hash: hash(&self.prev_hash)?,
            hash: hash(&self.hash)?,
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records written.
    pub records: u64,
    /// First and last seq written.
    pub seqs: Option<(i64, i64)>,
    /// The hash before the first record written (zeros from seq 1).
    pub first_prev_hash: Option<Hash256>,
    /// The last record's hash: the anchor for `audit verify --file --last-hash`.
    pub last_hash: Option<Hash256>,
    /// The chain head when the export started.
    pub head_seq: i64,
}

/// Where an export's records go.
enum Out<'a> {
    Jsonl(&'a mut dyn Write),
    Csv(Box<SheetWriter<&'a mut dyn Write>>),
}

/// Streams the records of `[since, until)` (see the module docs) to `w`,
/// page by page; `progress` is called every 100,000 records.
pub async fn export(
    store: &Store,
    since: Option<i64>,
    until: Option<i64>,
    format: ExportFormat,
    utc_offset_secs: i32,
    w: &mut dyn Write,
    progress: &mut dyn FnMut(&ExportSummary),
) -> anyhow::Result<ExportSummary> {
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            bail!("--since must be before --until");
        }
    }
    let (head_seq, _) = store.audit_head().await?;
    let mut sum = ExportSummary {
        head_seq,
        ..Default::default()
    };
    let mut out = match format {
        ExportFormat::Csv => {
            let mut c = SheetWriter::new(w);
            c.header(&CSV_HEADER.split(',').collect::<Vec<_>>())?;
            Out::Csv(Box::new(c))
        }
        ExportFormat::Jsonl => Out::Jsonl(w),
    };
    let mut after = 0;
    let mut started = false;
    'pages: while after < head_seq {
        let page = store.audit_page(after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            after = r.seq;
            if r.seq > head_seq {
                break 'pages;
            }
            if !started {
                if since.is_some_and(|s| r.at < s) {
                    continue;
                }
                started = true;
            }
            if until.is_some_and(|u| r.at >= u) {
                break 'pages;
            }
            if sum.records == 0 {
                sum.first_prev_hash = Some(r.prev_hash);
            }
            let e = ExportRecord::new(&r, utc_offset_secs);
            match &mut out {
                Out::Csv(c) => e.write_csv(c)?,
                Out::Jsonl(w) => writeln!(w, "{}", e.to_json())?,
            }
            sum.records += 1;
            sum.seqs = Some((sum.seqs.map_or(r.seq, |s| s.0), r.seq));
            sum.last_hash = Some(r.hash);
            if sum.records.is_multiple_of(PROGRESS_EVERY) {
                progress(&sum);
            }
        }
    }
    match &mut out {
        Out::Csv(c) => c.flush()?,
        Out::Jsonl(w) => w.flush()?,
    }
    Ok(sum)
}

/// How an exported chain was found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBreak {
    /// The file.
    pub file: PathBuf,
    /// Line number (1-based).
    pub line: u64,
    /// The record's seq, when the line could be read.
    pub seq: Option<i64>,
    /// `edited`, `deleted`, `reordered`, `bad link`, `malformed` or `truncated`.
    pub kind: &'static str,
    /// What exactly.
    pub detail: String,
}

/// The result of verifying exported files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileReport {
    /// Records verified before the first break.
    pub records: u64,
    /// First and last seq verified.
    pub seqs: Option<(i64, i64)>,
    /// The `prev_hash` of the first record (zeros when the export starts at seq 1).
    pub first_prev_hash: Option<Hash256>,
    /// The last verified record's hash.
    pub last_hash: Option<Hash256>,
    /// The first break, if any.
    pub broken: Option<FileBreak>,
}

impl FileReport {
    /// True when every record verified.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Verifies JSON-lines exports read in order as one chain; with
/// `last_hash`, also that the chain ends at that hash.
pub fn verify_files(files: &[PathBuf], last_hash: Option<Hash256>) -> anyhow::Result<FileReport> {
    let mut rep = FileReport::default();
    for f in files {
        let r =
            BufReader::new(File::open(f).with_context(|| format!("cannot open {}", f.display()))?);
        verify_reader(r, f, &mut rep)?;
        if rep.broken.is_some() {
            return Ok(rep);
        }
    }
    if let Some(want) = last_hash {
        if rep.last_hash != Some(want) {
            rep.broken = Some(FileBreak {
                file: files.last().cloned().unwrap_or_default(),
                line: 0,
                seq: rep.seqs.map(|s| s.1),
                kind: "truncated",
                detail: format!(
                    "the last record's hash is {}, not the expected {want}: records are missing at the end, or this is another chain",
                    rep.last_hash.map_or("(none)".into(), |h| h.to_hex())
                ),
            });
        }
    }
    Ok(rep)
}

/// Verifies the lines of one file, continuing the chain in `rep`.
pub fn verify_reader(r: impl BufRead, file: &Path, rep: &mut FileReport) -> anyhow::Result<()> {
    for (i, line) in r.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        let n = i as u64 + 1;
        let brk = |seq, kind, detail: String| FileBreak {
            file: file.to_path_buf(),
            line: n,
            seq,
            kind,
            detail,
        };
        if line.trim().is_empty() {
            continue;
        }
        let rec = match serde_json::from_str::<ExportRecord>(&line)
            .map_err(|e| e.to_string())
            .and_then(|e| e.record())
        {
            Ok(r) => r,
            Err(e) => {
                let seq = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["seq"].as_i64());
                rep.broken = Some(brk(seq, "malformed", e));
                return Ok(());
            }
        };
        if !rec.is_sealed() {
            rep.broken = Some(brk(
                Some(rec.seq),
                "edited",
                "the record's content does not match its hash".into(),
            ));
            return Ok(());
        }
        match (rep.seqs, rep.last_hash) {
            (Some((_, prev)), Some(prev_hash)) => {
                // Seqs come from the file: `prev + 1` overflows after a
                // record claiming seq i64::MAX (an attacker can seal one:
                // the hash has no key).
                if i128::from(rec.seq) > i128::from(prev) + 1 {
                    rep.broken = Some(brk(
                        Some(rec.seq),
                        "deleted",
                        format!("records {}–{} are missing", prev + 1, rec.seq - 1),
                    ));
                    return Ok(());
                }
                if rec.seq <= prev {
                    rep.broken = Some(brk(
                        Some(rec.seq),
                        "reordered",
                        format!("seq {} after seq {prev}", rec.seq),
                    ));
                    return Ok(());
                }
                if rec.prev_hash != prev_hash {
                    rep.broken = Some(brk(
                        Some(rec.seq),
                        "bad link",
                        "prev_hash is not the previous record's hash".into(),
                    ));
                    return Ok(());
                }
            }
            _ => {
                if rec.seq == 1 && rec.prev_hash != Hash256::ZERO {
                    rep.broken = Some(brk(
                        Some(1),
                        "bad link",
                        "the first record of the chain must have a zero prev_hash".into(),
                    ));
                    return Ok(());
                }
                rep.first_prev_hash = Some(rec.prev_hash);
            }
        }
        rep.records += 1;
        rep.seqs = Some((rep.seqs.map_or(rec.seq, |s| s.0), rec.seq));
        rep.last_hash = Some(rec.hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Audit;

    const JST: i32 = 9 * 3600;

    async fn store_with(n: i64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("k.db").to_str().unwrap())
            .await
            .unwrap();
        for i in 0..n {
            // Two records a day from 2025-01-01 00:00 JST; record 6 is a
            // second "early" (a clock out of order).
            let at = 1_735_657_200 + i * 43_200 - if i == 5 { 43_201 } else { 0 };
            s.append_audit(
                Audit::new(at, "admin:yamada", "user.add")
                    .subject(format!("u{i}"))
                    .reason("=HYPERLINK(\"x\"), 新規")
                    .detail(serde_json::json!({"n": i, "dept": "総務課"})),
            )
            .await
            .unwrap();
        }
        (dir, s)
    }

    async fn export_text(
        s: &Store,
        since: Option<i64>,
        until: Option<i64>,
        f: ExportFormat,
    ) -> (String, ExportSummary) {
        let mut buf = Vec::new();
        let sum = export(s, since, until, f, JST, &mut buf, &mut |_| {})
            .await
            .unwrap();
        (String::from_utf8(buf).unwrap(), sum)
    }

    fn verify_text(parts: &[&str], last: Option<Hash256>) -> FileReport {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = parts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = dir.path().join(format!("{i}.jsonl"));
                std::fs::write(&p, t).unwrap();
                p
            })
            .collect();
        verify_files(&files, last).unwrap()
    }

    /// Sealed records with extreme seqs (anyone can compute the hash): the
    /// check reports them instead of overflowing `prev + 1` (a panic in
    /// debug builds, a wrong "deleted" report in release). Seen while
    /// writing the `audit_export` fuzz target, whose structured mode seals
    /// such records.
    #[test]
    fn extreme_seqs_are_reported_not_overflowed() {
        let sealed = |seq: i64, prev_hash: Hash256| {
            let mut r = AuditRecord {
                seq,
                at: 1_735_657_200,
                actor: "a".into(),
                action: "x".into(),
                subject: String::new(),
                reason: String::new(),
                detail: "{}".into(),
                prev_hash,
                hash: Hash256::ZERO,
            };
            r.hash = r.compute_hash();
            r
        };
        let line = |r: &AuditRecord| ExportRecord::new(r, JST).to_json() + "\n";
        let last = sealed(i64::MAX, Hash256([7; 32]));
        for next in [i64::MAX, i64::MIN, 0] {
            let after = sealed(next, last.hash);
            let rep = verify_text(&[&(line(&last) + &line(&after))], None);
            let b = rep
                .broken
                .expect("a seq at or below i64::MAX after it is out of order");
            assert_eq!((b.kind, b.line, b.seq), ("reordered", 2, Some(next)));
        }
        let low = sealed(i64::MIN, Hash256([7; 32]));
        let rep = verify_text(&[&(line(&low) + &line(&sealed(i64::MAX, low.hash)))], None);
        let b = rep.broken.expect("a gap");
        assert_eq!(b.kind, "deleted");
        assert!(
            b.detail
                .contains(&format!("{}–{}", i64::MIN + 1, i64::MAX - 1)),
            "{}",
            b.detail
        );
    }

    #[test]
    fn times() {
        assert_eq!(
            crate::localtime::parse_instant("2025-01-06", JST).unwrap(),
            1_736_089_200
        );
        assert_eq!(
            crate::localtime::parse_instant("2025-01-06T00:00:00+09:00", JST).unwrap(),
            1_736_089_200
        );
        assert_eq!(
            crate::localtime::parse_instant("2025-01-05T15:00:00Z", 0).unwrap(),
            1_736_089_200
        );
        assert!(crate::localtime::parse_instant("2025-01-06 08:00", JST).is_err());
        assert!(crate::localtime::parse_instant("yesterday", JST).is_err());
    }

    #[tokio::test]
    async fn full_export_is_complete_and_verifies() {
        let (_d, s) = store_with(10).await;
        let rep = s.verify_audit().await.unwrap();
        assert!(rep.is_intact());
        let (text, sum) = export_text(&s, None, None, ExportFormat::Jsonl).await;
        let stored = s.audit_page(0, 100).await.unwrap();
        assert_eq!(sum.records, rep.records);
        assert_eq!(text.lines().count() as u64, rep.records);
        for (line, r) in text.lines().zip(&stored) {
            let e: ExportRecord = serde_json::from_str(line).unwrap();
            assert_eq!(e.record().unwrap(), *r, "every field round-trips");
        }
        assert_eq!(sum.last_hash, Some(s.audit_head().await.unwrap().1));
        let v = verify_text(&[&text], sum.last_hash);
        assert!(v.is_intact(), "{v:?}");
        assert_eq!(v.records, 10);
        assert_eq!(v.seqs, Some((1, 10)));
        assert_eq!(v.first_prev_hash, Some(Hash256::ZERO));
    }

    #[tokio::test]
    async fn windows_are_contiguous_and_tile_the_chain() {
        let (_d, s) = store_with(10).await;
        // 2025-01-01 .. 2025-01-06 (JST): records 0..=9 at two a day.
        let mid = crate::localtime::parse_instant("2025-01-03", JST).unwrap();
        let (a, sa) = export_text(&s, None, Some(mid), ExportFormat::Jsonl).await;
        let (b, sb) = export_text(&s, Some(mid), None, ExportFormat::Jsonl).await;
        assert_eq!(sa.seqs, Some((1, 4)));
        // Record 6 (seq 6) is stamped before `mid` but sits after seq 5 in
        // the chain: it stays in the second piece rather than leaving a gap.
        assert_eq!(sb.seqs, Some((5, 10)));
        assert_eq!(sb.first_prev_hash, sa.last_hash);
        assert!(verify_text(&[&a, &b], sb.last_hash).is_intact());
        let vb = verify_text(&[&b], None);
        assert!(vb.is_intact());
        assert_eq!(vb.first_prev_hash, sa.last_hash);
        // Out of order: the second piece before the first.
        let r = verify_text(&[&b, &a], None);
        assert_eq!(r.broken.unwrap().kind, "reordered");
        let (_, two) = export_text(&s, Some(mid), Some(mid + 1), ExportFormat::Jsonl).await;
        assert_eq!(two.seqs, Some((5, 6)));
        let (_, none) = export_text(&s, Some(mid + 1), Some(mid + 2), ExportFormat::Jsonl).await;
        assert_eq!((none.records, none.first_prev_hash), (0, None));
    }

    #[tokio::test]
    async fn tampering_with_an_exported_file_is_detected() {
        let (_d, s) = store_with(6).await;
        let (text, sum) = export_text(&s, None, None, ExportFormat::Jsonl).await;
        let lines: Vec<&str> = text.lines().collect();
        let kind = |t: String, last| verify_text(&[&t], last).broken.map(|b| (b.kind, b.line));

        // An edited reason.
        let edited = text.replacen("新規", "nothing happened", 1);
        assert_eq!(kind(edited, None), Some(("edited", 1)));
        // The human-readable time changed but not `at`.
        let mut v: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        v["time"] = "2025-01-02T09:00:00+09:00".into();
        let mut l = lines.clone();
        let changed = v.to_string();
        l[2] = &changed;
        assert_eq!(kind(l.join("\n"), None), Some(("malformed", 3)));
        // A deleted line.
        let mut l = lines.clone();
        l.remove(3);
        assert_eq!(kind(l.join("\n"), None), Some(("deleted", 4)));
        // Two lines swapped: a gap where the later one comes first.
        let mut l = lines.clone();
        l.swap(1, 2);
        assert_eq!(kind(l.join("\n"), None), Some(("deleted", 2)));
        // A forged record with a correct hash for its content but linked elsewhere.
        let mut forged: AuditRecord = serde_json::from_str::<ExportRecord>(lines[4])
            .unwrap()
            .record()
            .unwrap();
        forged.prev_hash = Hash256([7; 32]);
        forged.hash = forged.compute_hash();
        let f = ExportRecord::new(&forged, JST).to_json();
        let mut l = lines.clone();
        l[4] = &f;
        assert_eq!(kind(l.join("\n"), None), Some(("bad link", 5)));
        // Not JSON, or an extra field.
        let mut l = lines.clone();
        l[0] = "{not json";
        assert_eq!(kind(l.join("\n"), None), Some(("malformed", 1)));
        let extra = lines[0].replacen('{', "{\"note\":\"x\",", 1);
        let mut l = lines.clone();
        l[0] = &extra;
        assert_eq!(kind(l.join("\n"), None), Some(("malformed", 1)));
        // The last line cut off: caught only with the anchor.
        let cut = lines[..5].join("\n");
        assert_eq!(kind(cut.clone(), None), None);
        assert_eq!(kind(cut, sum.last_hash).map(|k| k.0), Some("truncated"));
        // Untouched, with the anchor.
        assert_eq!(kind(text, sum.last_hash), None);
    }

    #[tokio::test]
    async fn csv_export_has_every_field() {
        let (_d, s) = store_with(2).await;
        let (text, _) = export_text(&s, None, None, ExportFormat::Csv).await;
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        let r = &s.audit_page(0, 1).await.unwrap()[0];
        assert_eq!(
            lines.next().unwrap(),
            format!(
                "1,1735657200,2025-01-01T00:00:00+09:00,admin:yamada,user.add,u0,\"'=HYPERLINK(\"\"x\"\"), 新規\",\"{}\",{},{}",
                r.detail.replace('"', "\"\""),
                "0".repeat(64),
                r.hash.to_hex()
            )
        );
    }
}
