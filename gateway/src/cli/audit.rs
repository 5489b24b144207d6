//! `kakehashi-gateway audit export` and `audit verify`: the commands around
//! [`kakehashi_store::export`] (what an export is and how a copy is checked)
//! and the signed checkpoints that anchor the chain outside the database.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use kakehashi_store::export::{export, verify_files, ExportFormat, ExportSummary};
use kakehashi_store::localtime::parse_instant;
use kakehashi_store::sheet::BOM;
use kakehashi_store::Hash256;

use super::{local, open_store, output};
use crate::config::Config;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line; verifiable with `audit verify --file`.
    Jsonl,
    /// Comma-separated values with a header line (for reading; JSON lines for verifying).
    Csv,
}

impl From<Format> for ExportFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Jsonl => ExportFormat::Jsonl,
            Format::Csv => ExportFormat::Csv,
        }
    }
}

/// `audit export` arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// From the first record at or after this time: RFC 3339
    /// (2025-01-06T08:00:00+09:00) or a local date (2025-01-06). Default: the first record.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to the first record at or after this time (same forms). Default: the chain head.
    #[arg(long)]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start a CSV file with a UTF-8 byte order mark (for Excel).
    #[arg(long)]
    pub bom: bool,
}

/// Run `audit export` on the store of the gateway configuration `config`.
pub async fn export_cmd(config: &Path, a: ExportArgs) -> anyhow::Result<()> {
    let (cfg, store) = open_store(config).await?;
    let off = cfg.relay.identity.utc_offset_secs;
    let since = a
        .since
        .as_deref()
        .map(|s| parse_instant(s, off))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_instant(s, off))
        .transpose()?;
    if a.bom && a.format != Format::Csv {
        bail!("--bom is for --format csv only (a JSON-lines file must not start with a BOM)");
    }
    let mut w = output(a.out.as_deref())?;
    if a.bom {
        w.write_all(BOM.as_bytes())?;
    }
    let sum = export(
        &store,
        since,
        until,
        a.format.into(),
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
    config: &Path,
    key_files: &[PathBuf],
    checkpoint_file: Option<&Path>,
) -> anyhow::Result<bool> {
    use kakehashi_store::AnchorProblem;
    let (cfg, store) = open_store(config).await?;
    let keys = checkpoint_keys(&cfg, key_files)?;
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
    let r = store.verify_audit_anchored(&external, &keys).await?;
    // On PostgreSQL, records committed but not sealed yet (open_store
    // sealed what it could; a gateway sealing at the same moment holds the
    // rest for a fraction of a second).
    let (pending, oldest) = store.pending_audit().await?;
    if pending > 0 {
        let age = oldest.map_or(0, |at| kakehashi_store::unix_now().saturating_sub(at));
        println!(
            "封印待ちの記録 {pending} 件(最古 {age} 秒前)/ {pending} record(s) committed and waiting to be sealed into the chain (oldest {age} s ago){}",
            if age > 60 {
                ": no gateway has sealed for over a minute; check that the gateways run and reach the database"
            } else {
                ""
            }
        );
    }
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
                local(checkpoint.at, cfg.relay.identity.utc_offset_secs),
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
                local(c.at, cfg.relay.identity.utc_offset_secs),
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
