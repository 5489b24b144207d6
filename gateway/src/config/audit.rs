//! `[audit]`: the audit log's signed checkpoints, validated into
//! [`CheckpointConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use kakehashi_config::{duration, DurationKey};
use serde::Deserialize;

use crate::checkpoint::CheckpointConfig;

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The Ed25519 key that signs audit checkpoints (default:
    /// `audit-checkpoint.key` beside `ticket_key`); created, mode 0600, on
    /// first start. Never in the database.
    #[serde(default)]
    pub checkpoint_key: Option<PathBuf>,
    /// The checkpoint file, appended (default: `audit-checkpoints.jsonl`
    /// beside `checkpoint_key`).
    #[serde(default)]
    pub checkpoint_log: Option<PathBuf>,
    /// Time between checkpoints when the chain head has moved (default `"60s"`).
    #[serde(default = "default_checkpoint_interval", deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(60)
}

/// Validate `[audit]` (absent: the defaults); `ticket_key` is `[tls]
/// ticket_key`, resolved, beside which the key is kept by default.
pub fn checkpoints(
    a: Option<AuditSection>,
    ticket_key: &Path,
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> anyhow::Result<CheckpointConfig> {
    let (key, log, interval) = match a {
        Some(a) => (a.checkpoint_key, a.checkpoint_log, a.checkpoint_interval),
        None => (None, None, default_checkpoint_interval()),
    };
    let key = match key {
        Some(k) => rel(k),
        None => ticket_key.with_file_name(crate::checkpoint::KEY_FILE),
    };
    let log = match log {
        Some(l) => rel(l),
        None => key.with_file_name(crate::checkpoint::LOG_FILE),
    };
    let interval = DurationKey::new("audit", "checkpoint_interval", "60s").between(
        interval,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    )?;
    Ok(CheckpointConfig { key, log, interval })
}
