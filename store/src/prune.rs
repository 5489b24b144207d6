//! Deleting what has expired: one-time login and enrollment codes, login
//! tokens, and idle lockout counters. They are single-use or time-bound
//! secrets (only their hashes are stored) and grow the database with every
//! login; their issue and use stay in the audit log.

use crate::audit::Audit;
use crate::db::Store;
use crate::error::Result;

/// How many rows [`Store::prune_expired`] deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// `login_codes`.
    pub login_codes: u64,
    /// `enrollment_codes`.
    pub enrollment_codes: u64,
    /// `login_tokens`.
    pub login_tokens: u64,
    /// `lockouts` (counters idle for the grace and not locked).
    pub lockouts: u64,
}

impl Pruned {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.login_codes + self.enrollment_codes + self.login_tokens + self.lockouts
    }
}

impl Store {
    /// Deletes codes and tokens that expired more than `grace_secs` before
    /// `now`, and lockout counters whose window started that long ago and
    /// that lock nothing now. The grace keeps a token that expired (or was
    /// revoked) recently answering `token_expired` / `token_revoked` rather
    /// than "unknown". One audit record (`store.prune`, with the counts) when
    /// anything was deleted, none otherwise; gateways pruning at once delete
    /// each row once.
    pub async fn prune_expired(&self, now: i64, grace_secs: i64, audit: Audit) -> Result<Pruned> {
        let before = now.saturating_sub(grace_secs.max(0));
        // Counted first, so the audit record carries the counts; rows with
        // `expires_at < before` are never added (new ones expire later), so
        // the deletes match the counts unless another gateway pruned them
        // meanwhile, and then this transaction is rolled back.
        const COUNT: &str = "SELECT \
             (SELECT COUNT(*) FROM login_codes WHERE expires_at < $1), \
             (SELECT COUNT(*) FROM enrollment_codes WHERE expires_at < $1), \
             (SELECT COUNT(*) FROM login_tokens WHERE expires_at < $1), \
             (SELECT COUNT(*) FROM lockouts WHERE window_start < $1 \
                AND (locked_until IS NULL OR locked_until < $2))";
        const CODES: &str = "DELETE FROM login_codes WHERE expires_at < $1";
        const ENROLL: &str = "DELETE FROM enrollment_codes WHERE expires_at < $1";
        const TOKENS: &str = "DELETE FROM login_tokens WHERE expires_at < $1";
        const LOCKOUTS: &str = "DELETE FROM lockouts WHERE window_start < $1 \
             AND (locked_until IS NULL OR locked_until < $2)";
        let (a, b, c, d): (i64, i64, i64, i64) = read!(self, |p| sqlx::query_as(COUNT)
            .bind(before)
            .bind(now)
            .fetch_one(p)
            .await?);
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let want = Pruned {
            login_codes: count(a),
            enrollment_codes: count(b),
            login_tokens: count(c),
            lockouts: count(d),
        };
        if want.total() == 0 {
            return Ok(want);
        }
        let audit = audit.detail(serde_json::to_value(want).unwrap_or_default());
        let (got, _) = write_tx!(self, audit, |tx| {
            let mut got = Pruned::default();
            for (sql, n) in [
                (CODES, &mut got.login_codes),
                (ENROLL, &mut got.enrollment_codes),
                (TOKENS, &mut got.login_tokens),
            ] {
                *n = sqlx::query(sql)
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            got.lockouts = sqlx::query(LOCKOUTS)
                .bind(before)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if got != want {
                // Another gateway pruned some of them first: roll back.
                return Ok(Pruned::default());
            }
            got
        });
        Ok(got)
    }
}
