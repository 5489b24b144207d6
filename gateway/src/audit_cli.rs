//! `kakehashi-gateway audit export` and `audit verify --file`: the security
//! officer's copy of the audit log, and the check that a copy can be trusted.
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
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use kakehashi_store::{AuditRecord, Hash256, Store};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;
use crate::report::{csv_field, local_midnight, parse_date, utc_offset, BOM};

/// Records read from the store at once.
const PAGE: u32 = 1000;
/// Progress is reported on stderr every this many records.
const PROGRESS_EVERY: u64 = 100_000;

/// Opens the store named in the configuration.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let url = cfg
        .store_url
        .as_deref()
        .context("the configuration has no [store]")?;
    Store::open(url)
        .await
        .with_context(|| format!("cannot open the store {}", kakehashi_store::redact_url(url)))
}

/// A buffered writer on `path`, or on standard output.
pub fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line; verifiable with `audit verify --file`.
    Jsonl,
    /// Comma-separated values with a header line (for reading; JSON lines for verifying).
    Csv,
}

/// `audit export` arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The gateway's configuration file (its [store] is used).
    #[arg(long)]
    pub config: PathBuf,
    /// From the first record at or after this time: RFC 3339
    /// (2025-01-06T08:00:00+09:00) or a local date (2025-01-06). Default: the first record.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to the first record at or after this time (same forms). Default: the chain head.
    #[arg(long)]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start a CSV file with a UTF-8 byte order mark (for Excel).
    #[arg(long)]
    pub bom: bool,
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

fn rfc3339(at: i64, utc_offset_secs: i32) -> String {
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.to_offset(utc_offset(utc_offset_secs))
                .format(&Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

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

    /// One CSV line (no newline). Text that a spreadsheet would run as a
    /// formula is prefixed with `'` (see [`csv_field`]).
    pub fn to_csv(&self) -> String {
        [
            self.seq.to_string(),
            self.at.to_string(),
            self.time.clone(),
            csv_field(&self.actor, true),
            csv_field(&self.action, true),
            csv_field(&self.subject, true),
            csv_field(&self.reason, true),
            csv_field(&self.detail, true),
            self.prev_hash.clone(),
            self.hash.clone(),
        ]
        .join(",")
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

/// Parses `--since` / `--until`: RFC 3339, or a local date meaning its midnight.
pub fn parse_time(s: &str, utc_offset_secs: i32) -> anyhow::Result<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let d = parse_date(s).with_context(|| {
        format!("{s:?} is neither RFC 3339 (2025-01-06T08:00:00+09:00) nor a date (2025-01-06)")
    })?;
    Ok(local_midnight(d, utc_offset(utc_offset_secs)))
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
    if format == ExportFormat::Csv {
        writeln!(w, "{CSV_HEADER}")?;
    }
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
            match format {
                ExportFormat::Jsonl => writeln!(w, "{}", e.to_json())?,
                ExportFormat::Csv => writeln!(w, "{}", e.to_csv())?,
            }
            sum.records += 1;
            sum.seqs = Some((sum.seqs.map_or(r.seq, |s| s.0), r.seq));
            sum.last_hash = Some(r.hash);
            if sum.records.is_multiple_of(PROGRESS_EVERY) {
                progress(&sum);
            }
        }
    }
    w.flush()?;
    Ok(sum)
}

/// Run `audit export`.
pub async fn export_cmd(a: ExportArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&a.config)?;
    let off = cfg.identity.utc_offset_secs;
    let since = a.since.as_deref().map(|s| parse_time(s, off)).transpose()?;
    let until = a.until.as_deref().map(|s| parse_time(s, off)).transpose()?;
    if a.bom && a.format != ExportFormat::Csv {
        bail!("--bom is for --format csv only (a JSON-lines file must not start with a BOM)");
    }
    let store = open_store(&cfg).await?;
    let mut w = output(a.out.as_deref())?;
    if a.bom {
        w.write_all(BOM.as_bytes())?;
    }
    let sum = export(
        &store,
        since,
        until,
        a.format,
        off,
        &mut w,
        &mut |s: &ExportSummary| {
            eprintln!(
                "… {} 件 / {} records (seq {} of {})",
                s.records,
                s.records,
                s.seqs.map_or(0, |x| x.1),
                s.head_seq
            );
        },
    )
    .await?;
    drop(w);
    match (sum.seqs, sum.last_hash) {
        (Some((first, last)), Some(h)) => {
            eprintln!(
                "監査ログを書き出しました: {n} 件 (seq {first}–{last}) / exported {n} records (seq {first}–{last})",
                n = sum.records
            );
            eprintln!("last hash (控えてください / keep it to anchor the file): {h}");
        }
        _ => eprintln!("該当する記録はありません / no records in that range"),
    }
    Ok(())
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
                if rec.seq > prev + 1 {
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

/// Run `audit verify --file …`; prints the verdict and returns whether the
/// files are intact.
pub fn verify_files_cmd(files: &[PathBuf], last_hash: Option<&str>) -> anyhow::Result<bool> {
    let want = last_hash
        .map(|h| {
            Hash256::from_hex(h).with_context(|| format!("--last-hash {h:?} is not 64 hex digits"))
        })
        .transpose()?;
    let rep = verify_files(files, want)?;
    if let Some(b) = &rep.broken {
        let at = match b.seq {
            Some(s) => format!("record {s}, "),
            None => String::new(),
        };
        println!(
            "改ざんまたは欠落を検出しました / EXPORT BROKEN at {}line {} ({at}{}): {}",
            b.file.display(),
            b.line,
            b.kind,
            b.detail
        );
        println!("({} records verified before it)", rep.records);
        return Ok(false);
    }
    match (rep.seqs, rep.last_hash, rep.first_prev_hash) {
        (Some((first, last)), Some(h), Some(p)) => {
            println!(
                "書き出しファイルは改ざんされていません / export intact: {} records, seq {first}–{last}, chain verified",
                rep.records
            );
            println!("last hash: {h}");
            if first == 1 {
                println!("starts at the beginning of the chain (seq 1)");
            } else {
                println!("starts at seq {first}; the record before it has hash {p} (compare with the previous export)");
            }
            if want.is_none() {
                println!("note: records cut off the end cannot be detected without --last-hash (the hash printed by `audit export`)");
            }
        }
        _ => println!("no records in the file(s)"),
    }
    Ok(true)
}

fn utc_time(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// The trusted checkpoint public keys: the files given, else the gateway's
/// own key file (or its `.pub` beside it); with a note when there is none.
fn checkpoint_keys(cfg: &Config, key_files: &[PathBuf]) -> anyhow::Result<Vec<[u8; 32]>> {
    use crate::checkpoint::{load_public_key, public_path};
    if !key_files.is_empty() {
        return key_files.iter().map(|f| load_public_key(f)).collect();
    }
    let key = &cfg.checkpoints.key;
    let public = public_path(key);
    if key.exists() {
        match load_public_key(key) {
            Ok(k) => Ok(vec![k]),
            // E.g. not readable by this user: the public half beside it will do.
            Err(e) if public.exists() => {
                println!("note: {e:#}; checking with {} instead", public.display());
                Ok(vec![load_public_key(&public)?])
            }
            Err(e) => Err(e),
        }
    } else if public.exists() {
        Ok(vec![load_public_key(&public)?])
    } else {
        println!(
            "note: no checkpoint key at {} (nor {}): checkpoints cannot be checked; give the public key with --checkpoint-key",
            key.display(),
            public.display()
        );
        Ok(Vec::new())
    }
}

/// Run `audit verify --config`: walk the chain and check it against the
/// signed checkpoints (the checkpoint file and the checkpoint records) with
/// public keys from outside the database; prints the verdict, which span is
/// anchored and which is not, and returns whether the log is intact.
pub async fn verify_store_cmd(
    cfg: &Config,
    key_files: &[PathBuf],
    checkpoint_file: Option<&Path>,
) -> anyhow::Result<bool> {
    use kakehashi_store::AnchorProblem;
    let keys = checkpoint_keys(cfg, key_files)?;
    let log = checkpoint_file.unwrap_or(&cfg.checkpoints.log);
    let external = if checkpoint_file.is_some() || log.exists() {
        crate::checkpoint::read_log(log)?
    } else {
        println!(
            "note: no checkpoint file at {}: only the checkpoints recorded in the database are checked",
            log.display()
        );
        Vec::new()
    };
    let store = open_store(cfg).await?;
    let r = store.verify_audit_anchored(&external, &keys).await?;
    let head = r.chain.head_seq;
    if let Some(p) = &r.problem {
        match p {
            AnchorProblem::BadSignature { seq, source } => println!(
                "署名が正しくないチェックポイント / AUDIT CHECKPOINT FORGED: the checkpoint for seq {seq} ({source}) is not validly signed by the checkpoint key"
            ),
            AnchorProblem::Mismatch {
                seq,
                since,
                checkpoint,
            } => println!(
                "監査ログが書き換えられています / AUDIT LOG REWRITTEN: the chain at seq {seq} does not match the checkpoint signed at {} by {}; records {since}–{seq} were changed and re-chained",
                utc_time(checkpoint.at),
                checkpoint.gateway
            ),
            AnchorProblem::Missing { seq, head_seq } => println!(
                "監査ログの末尾が削除されています / AUDIT LOG TRUNCATED: a checkpoint signed seq {seq} but the chain ends at seq {head_seq}; records {}–{seq} were deleted",
                head_seq + 1
            ),
            other => println!("AUDIT LOG BROKEN: {other:?}"),
        }
        return Ok(false);
    }
    if let Some(b) = &r.chain.first_broken {
        println!(
            "AUDIT LOG BROKEN at record {}: {} ({} records checked)",
            b.seq,
            b.kind.as_str(),
            r.chain.records
        );
        return Ok(false);
    }
    println!(
        "監査ログは改ざんされていません / audit log intact: {} records, chain verified",
        r.chain.records
    );
    match &r.anchored {
        Some(c) => {
            println!(
                "anchored up to {} by the checkpoint signed at {} by {} ({} checkpoint(s) checked)",
                c.seq,
                utc_time(c.at),
                c.gateway,
                r.checked
            );
            if c.seq < head {
                println!(
                    "unanchored: records {}–{head} come after the last checkpoint",
                    c.seq + 1
                );
            } else {
                println!("every record is anchored");
            }
        }
        None if head > 0 => println!(
            "unanchored: records 1–{head}; no checkpoint signed by the checkpoint key (a database writer could rewrite them undetected)"
        ),
        None => {}
    }
    if r.unknown_key > 0 {
        println!(
            "note: {} checkpoint(s) signed by another key were not checked (another gateway's? give its public key with --checkpoint-key)",
            r.unknown_key
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_store::Audit;

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

    #[test]
    fn times() {
        assert_eq!(parse_time("2025-01-06", JST).unwrap(), 1_736_089_200);
        assert_eq!(
            parse_time("2025-01-06T00:00:00+09:00", JST).unwrap(),
            1_736_089_200
        );
        assert_eq!(
            parse_time("2025-01-05T15:00:00Z", 0).unwrap(),
            1_736_089_200
        );
        assert!(parse_time("2025-01-06 08:00", JST).is_err());
        assert!(parse_time("yesterday", JST).is_err());
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
        let mid = parse_time("2025-01-03", JST).unwrap();
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
