//! Short-lived one-time state that every gateway of a cluster shares:
//! WebAuthn ceremonies between their start and finish, portal sessions, and
//! level-3 step-ups already used. Kept in the store rather than in one
//! process, so a login started on one gateway finishes on another and a
//! step-up spent on one is spent everywhere.
//!
//! Rows are keyed by the SHA-256 of a random id (whoever reads the database
//! cannot present it), hold their state as text (JSON) and expire. Not
//! audited: the events around them (logins, logouts, refusals) are. Quotas
//! keep a flood bounded: per user and per source address a new row evicts
//! that key's oldest, and a kind over its cap drops expired rows and then
//! the oldest row of its busiest source, so a flood only displaces itself.

use crate::db::{Pool, Store};
use crate::error::{Error, Result};
use crate::Hash256;

/// Largest state kept in one row (a WebAuthn ceremony is a few KiB).
pub const MAX_TRANSIENT_VALUE: usize = 64 * 1024;

/// What a row of transient state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientKind {
    /// A portal WebAuthn ceremony (enrollment or login) in progress.
    Ceremony,
    /// A signed-in portal visitor.
    PortalSession,
    /// A fresh login that has already opened its one level-3 session.
    StepUp,
}

impl TransientKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TransientKind::Ceremony => "ceremony",
            TransientKind::PortalSession => "portal_session",
            TransientKind::StepUp => "step_up",
        }
    }
}

/// The bounds a new row is counted against ([`Store::put_transient`]).
#[derive(Debug, Clone, Copy)]
pub struct Quotas<'a> {
    /// Most rows of the kind in all (`None`: no cap, and no count on insert).
    pub cap: Option<u32>,
    /// The row's user and that user's most rows of the kind.
    pub user: Option<(&'a str, u32)>,
    /// The row's source address and that address's most rows of the kind.
    pub source: Option<(&'a str, u32)>,
}

impl Store {
    /// Stores `value` under `key` until `expires_at`, within `quotas`:
    /// over a user's or source's limit that key's oldest rows (and its
    /// expired ones) go; with the kind over its cap, its expired rows go,
    /// then the oldest row of its busiest source (or, without sources, the
    /// one expiring first). Never refuses for a quota. One transaction.
    pub async fn put_transient(
        &self,
        kind: TransientKind,
        key: &Hash256,
        value: &str,
        expires_at: i64,
        now: i64,
        quotas: &Quotas<'_>,
    ) -> Result<()> {
        if value.len() > MAX_TRANSIENT_VALUE {
            return Err(Error::invalid(
                "transient state",
                format!("{} bytes (at most {MAX_TRANSIENT_VALUE})", value.len()),
            ));
        }
        const INSERT: &str = "INSERT INTO transient_state \
             (kind, key_hash, user_key, source_key, expires_at, value) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq";
        // Keeps the key's `limit` newest live rows; its expired ones go too.
        const TRIM_USER: &str = "DELETE FROM transient_state WHERE kind = $1 AND user_key = $2 \
             AND seq NOT IN (SELECT seq FROM transient_state WHERE kind = $1 AND user_key = $2 \
             AND expires_at > $3 ORDER BY seq DESC LIMIT $4)";
        const TRIM_SOURCE: &str =
            "DELETE FROM transient_state WHERE kind = $1 AND source_key = $2 \
             AND seq NOT IN (SELECT seq FROM transient_state WHERE kind = $1 AND source_key = $2 \
             AND expires_at > $3 ORDER BY seq DESC LIMIT $4)";
        const COUNT: &str = "SELECT COUNT(*) FROM transient_state WHERE kind = $1";
        const EXPIRED: &str = "DELETE FROM transient_state WHERE kind = $1 AND expires_at <= $2";
        // The new row ($2) is never the one to go.
        const BUSIEST: &str = "DELETE FROM transient_state WHERE seq = (\
             SELECT seq FROM transient_state WHERE kind = $1 AND seq <> $2 AND source_key = (\
               SELECT source_key FROM transient_state WHERE kind = $1 AND seq <> $2 \
               AND source_key IS NOT NULL \
               GROUP BY source_key ORDER BY COUNT(*) DESC, MIN(seq) LIMIT 1) \
             ORDER BY seq LIMIT 1)";
        const SOONEST: &str = "DELETE FROM transient_state WHERE seq = (\
             SELECT seq FROM transient_state WHERE kind = $1 AND seq <> $2 \
             ORDER BY expires_at, seq LIMIT 1)";
        let kind = kind.as_str();
        let user = quotas.user.map(|(u, n)| (u, i64::from(n.max(1))));
        let source = quotas.source.map(|(s, n)| (s, i64::from(n.max(1))));
        let cap = quotas.cap.map(|c| i64::from(c.max(1)));
        macro_rules! run {
            ($pool:expr) => {{
                // The insert comes first: a SQLite transaction that starts
                // by writing takes the write lock at once (no upgrade).
                let mut tx = $pool.begin().await?;
                let seq: i64 = sqlx::query_scalar(INSERT)
                    .bind(kind)
                    .bind(&key.as_bytes()[..])
                    .bind(user.map(|u| u.0))
                    .bind(source.map(|s| s.0))
                    .bind(expires_at)
                    .bind(value)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(crate::error::on_write("transient state"))?;
                for (sql, quota) in [(TRIM_USER, user), (TRIM_SOURCE, source)] {
                    if let Some((k, limit)) = quota {
                        sqlx::query(sql)
                            .bind(kind)
                            .bind(k)
                            .bind(now)
                            .bind(limit)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                // Counted only for a capped kind: the count scans the kind's
                // index on every insert.
                let (mut n, cap): (i64, i64) = match cap {
                    Some(cap) => (
                        sqlx::query_scalar(COUNT)
                            .bind(kind)
                            .fetch_one(&mut *tx)
                            .await?,
                        cap,
                    ),
                    None => (0, 0),
                };
                if n > cap {
                    sqlx::query(EXPIRED)
                        .bind(kind)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    n = sqlx::query_scalar(COUNT)
                        .bind(kind)
                        .fetch_one(&mut *tx)
                        .await?;
                }
                while n > cap {
                    let mut gone = sqlx::query(BUSIEST)
                        .bind(kind)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                    if gone.rows_affected() == 0 {
                        gone = sqlx::query(SOONEST)
                            .bind(kind)
                            .bind(seq)
                            .execute(&mut *tx)
                            .await?;
                    }
                    if gone.rows_affected() == 0 {
                        break;
                    }
                    n -= 1;
                }
                tx.commit().await?;
            }};
        }
        match &self.pool {
            Pool::Sqlite(p) => run!(p),
            Pool::Postgres(p) => run!(p),
        }
        Ok(())
    }

    /// Removes the row and returns its value if it had not expired at
    /// `now`: one use only, on whichever gateway asks first.
    pub async fn take_transient(
        &self,
        kind: TransientKind,
        key: &Hash256,
        now: i64,
    ) -> Result<Option<String>> {
        const SQL: &str = "DELETE FROM transient_state WHERE kind = $1 AND key_hash = $2 \
             RETURNING expires_at, value";
        let row: Option<(i64, String)> = read!(self, |p| sqlx::query_as(SQL)
            .bind(kind.as_str())
            .bind(&key.as_bytes()[..])
            .fetch_optional(p)
            .await?);
        Ok(row.and_then(|(exp, value)| (exp > now).then_some(value)))
    }

    /// The row's value if it has not expired at `now`.
    pub async fn get_transient(
        &self,
        kind: TransientKind,
        key: &Hash256,
        now: i64,
    ) -> Result<Option<String>> {
        const SQL: &str = "SELECT value FROM transient_state \
             WHERE kind = $1 AND key_hash = $2 AND expires_at > $3";
        Ok(read!(self, |p| sqlx::query_scalar(SQL)
            .bind(kind.as_str())
            .bind(&key.as_bytes()[..])
            .bind(now)
            .fetch_optional(p)
            .await?))
    }

    /// Removes the row (nothing when there is none).
    pub async fn remove_transient(&self, kind: TransientKind, key: &Hash256) -> Result<()> {
        const SQL: &str = "DELETE FROM transient_state WHERE kind = $1 AND key_hash = $2";
        read!(self, |p| sqlx::query(SQL)
            .bind(kind.as_str())
            .bind(&key.as_bytes()[..])
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Marks `key` used until `expires_at`. `true` for the one caller that
    /// claimed it (no row, or only an expired one); `false` when it was
    /// already used — on this gateway or any other.
    pub async fn claim_transient(
        &self,
        kind: TransientKind,
        key: &Hash256,
        expires_at: i64,
        now: i64,
    ) -> Result<bool> {
        const SQL: &str = "INSERT INTO transient_state (kind, key_hash, expires_at, value) \
             VALUES ($1, $2, $3, '') ON CONFLICT (kind, key_hash) DO UPDATE \
             SET expires_at = excluded.expires_at, user_key = NULL, source_key = NULL, value = '' \
             WHERE transient_state.expires_at <= $4";
        let n = read!(self, |p| sqlx::query(SQL)
            .bind(kind.as_str())
            .bind(&key.as_bytes()[..])
            .bind(expires_at)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Deletes every row that expired before `now`; returns how many went.
    pub async fn prune_transient(&self, now: i64) -> Result<u64> {
        const SQL: &str = "DELETE FROM transient_state WHERE expires_at <= $1";
        Ok(read!(self, |p| sqlx::query(SQL)
            .bind(now)
            .execute(p)
            .await?
            .rows_affected()))
    }
}
