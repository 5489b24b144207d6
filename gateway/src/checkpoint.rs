//! Signed checkpoints of the audit chain, anchored outside the database.
//!
//! The gateway keeps an Ed25519 key of its own, `audit-checkpoint.key`
//! (PKCS#8 PEM, mode 0600; `[audit] checkpoint_key`, default beside the
//! ticket key), created on first start with its public half beside it
//! (`audit-checkpoint.pub`, one line `ed25519:<base64>`). A key file that
//! group or others can read is refused. The key is never in the database.
//!
//! Every `[audit] checkpoint_interval` (default 60s) when the chain head has
//! moved, and once more on shutdown, the gateway signs the head — seq, hash,
//! time and gateway name ([`kakehashi_store::Checkpoint`]) — and keeps the
//! checkpoint in two places:
//!
//! - appended to the checkpoint file (`[audit] checkpoint_log`, default
//!   `audit-checkpoints.jsonl` beside the key), one JSON line each, fsynced;
//! - as an audit record of its own (action `audit.checkpoint`), so it is in
//!   every export and syslog forwards it to the log server with the rest.
//!
//! A database writer can rewrite records and recompute every hash, and can
//! delete the checkpoint records too, but cannot sign the new hash at an
//! old seq: `audit verify` recomputes the chain and compares it with every
//! checkpoint whose signature holds under the public key read from outside
//! the database (the key file, or `--checkpoint-key`). The copies in the
//! file and at the log server are what make deleting the records useless.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kakehashi_store::{Audit, Checkpoint, Store, CHECKPOINT_ACTION};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Validated `[audit]` checkpoint settings.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The signing key file.
    pub key: PathBuf,
    /// The checkpoint file (JSON lines, appended).
    pub log: PathBuf,
    /// How often the head is signed when it has moved.
    pub interval: Duration,
}

/// Default file name of the key, beside the ticket key.
pub const KEY_FILE: &str = "audit-checkpoint.key";
/// Default file name of the checkpoint file, beside the key.
pub const LOG_FILE: &str = "audit-checkpoints.jsonl";

/// The public key file beside `key` (`audit-checkpoint.pub`).
pub fn public_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Loads the checkpoint signing key (refusing one others can read).
pub fn load_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    kakehashi_transport::tls::check_key_file(path)?;
    kakehashi_pki::load_ticket_signing_key(path)
        .with_context(|| format!("cannot load the audit checkpoint key {}", path.display()))
}

/// Loads the key, or creates it (0600) and its `.pub` when it does not exist.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    if !path.exists() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate the audit checkpoint key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("generated audit checkpoint key is unusable"))?;
        kakehashi_pki::write_secret_file(path, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            .with_context(|| {
                format!(
                    "cannot create the audit checkpoint key {} (set [audit] checkpoint_key to a writable place)",
                    path.display()
                )
            })?;
        let public = public_path(path);
        std::fs::write(
            &public,
            kakehashi_pki::format_ticket_public_key(pair.public_key().as_ref()),
        )
        .with_context(|| format!("cannot write {}", public.display()))?;
        info!(key = %path.display(), public = %public.display(), "Created the audit checkpoint key; keep a copy of the public key off this host");
    }
    load_key(path)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The 32-byte public key in `path`: a `.pub` line (`ed25519:<base64>`), or
/// the private key file itself.
pub fn load_public_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.trim_start().starts_with("-----BEGIN") {
        let k = load_key(path)?;
        return Ok(k
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes"));
    }
    kakehashi_pki::parse_ticket_public_key(&text)
        .with_context(|| format!("{} is not an audit checkpoint public key", path.display()))
}

/// Appends one checkpoint line to `path` and syncs it to disk.
pub fn append_to_log(path: &Path, c: &Checkpoint) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open the checkpoint file {}", path.display()))?;
    let mut line = c.to_json().to_string();
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cannot write the checkpoint file {}", path.display()))
}

/// Reads a checkpoint file: (line number, checkpoint) for every line.
/// A line that is not a checkpoint is an error naming it.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<(u64, Checkpoint)>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the checkpoint file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let c = serde_json::from_str(&line)
            .map_err(anyhow::Error::from)
            .and_then(|v| Checkpoint::from_json(&v).map_err(anyhow::Error::from))
            .with_context(|| format!("{} line {n} is not a checkpoint", path.display()))?;
        out.push((n, c));
    }
    Ok(out)
}

/// Signs the audit chain head now and then.
#[derive(Debug)]
pub struct Checkpointer {
    store: Store,
    key: Ed25519KeyPair,
    cfg: CheckpointConfig,
    gateway: String,
}

impl Checkpointer {
    /// Loads (or creates) the key; errors here stop the gateway at start.
    pub fn new(cfg: CheckpointConfig, gateway: &str, store: Store) -> anyhow::Result<Self> {
        let key = load_or_create_key(&cfg.key)?;
        Ok(Self {
            store,
            key,
            cfg,
            gateway: gateway.to_owned(),
        })
    }

    /// Signs the head if it moved since the last checkpoint (the head record
    /// is not itself a checkpoint); writes the checkpoint file, then the
    /// checkpoint record. `why` (`interval`, `shutdown`) is the record's reason.
    pub async fn checkpoint(&self, why: &str) -> anyhow::Result<Option<Checkpoint>> {
        let (seq, hash) = self.store.audit_head().await?;
        if seq == 0 {
            return Ok(None);
        }
        let last = self.store.audit_page(seq - 1, 1).await?;
        if last.first().is_some_and(|r| r.action == CHECKPOINT_ACTION) {
            return Ok(None);
        }
        let now = kakehashi_store::unix_now();
        let c = Checkpoint::sign(seq, hash, now, &self.gateway, &self.key);
        if let Err(e) = append_to_log(&self.cfg.log, &c) {
            warn!(error = %format!("{e:#}"), seq, "Audit checkpoint not written to the checkpoint file (it is still recorded in the audit log)");
        }
        self.store
            .append_audit(
                Audit::new(now, format!("gateway:{}", self.gateway), CHECKPOINT_ACTION)
                    .subject(seq.to_string())
                    .reason(why)
                    .detail(c.to_json()),
            )
            .await
            .context("cannot record the audit checkpoint")?;
        info!(seq, why, "Audit checkpoint signed");
        Ok(Some(c))
    }

    /// Signs the head every interval until `stop` is cancelled (the final
    /// checkpoint on shutdown is the caller's, after the last records).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        info!(interval = ?self.cfg.interval, file = %self.cfg.log.display(), "Signing audit checkpoints");
        let mut ticker = tokio::time::interval(self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.checkpoint("interval").await {
                warn!(error = %format!("{e:#}"), "Cannot sign an audit checkpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn key_is_created_private_and_refused_when_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let k = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_public_key(&public_path(&path)).unwrap(),
            k.public_key().as_ref()
        );
        assert_eq!(load_public_key(&path).unwrap(), k.public_key().as_ref());
        // The same key on the next start.
        let again = load_or_create_key(&path).unwrap();
        assert_eq!(again.public_key().as_ref(), k.public_key().as_ref());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!("{:#}", load_or_create_key(&path).unwrap_err());
        assert!(e.contains("readable by group or others"), "{e}");
    }

    #[test]
    fn checkpoint_file_round_trips_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(&dir.path().join(KEY_FILE)).unwrap();
        let log = dir.path().join(LOG_FILE);
        let a = Checkpoint::sign(3, kakehashi_store::Hash256([1; 32]), 10, "gw1", &key);
        let b = Checkpoint::sign(9, kakehashi_store::Hash256([2; 32]), 20, "gw1", &key);
        append_to_log(&log, &a).unwrap();
        append_to_log(&log, &b).unwrap();
        assert_eq!(read_log(&log).unwrap(), vec![(1, a), (2, b)]);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"seq\":1}\n").unwrap();
        let e = format!("{:#}", read_log(&log).unwrap_err());
        assert!(e.contains("line 3 is not a checkpoint"), "{e}");
    }
}
