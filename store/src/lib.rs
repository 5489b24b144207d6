//! Kakehashi gateway store: users, credentials, devices, desks, tokens,
//! policy data, session records and the hash-chained audit log, in an
//! embedded SQLite file or in PostgreSQL.
//!
//! # Opening
//!
//! [`Store::open`] takes `sqlite:///abs/path.db`, `sqlite://rel/path.db`,
//! `sqlite:path.db` or a plain path (the file and its directory are created
//! if missing), or `postgres://…` / `postgresql://…` for a cluster of
//! gateways sharing one database. It applies the embedded migrations
//! (`migrations/sqlite`, `migrations/postgres`) before returning. [`Store`]
//! is a cheap `Clone` (a connection pool inside).
//!
//! SQLite runs with `journal_mode=WAL`, `synchronous=FULL` and
//! `foreign_keys=ON`: a change is on disk when its method returns, and a
//! crash (even power loss) loses nothing that was committed. PostgreSQL is
//! used with its defaults (`synchronous_commit=on`). No TLS is compiled in:
//! PostgreSQL must be reached over a trusted network or a local socket.
//!
//! # Changes and their audit record
//!
//! Every mutating method takes an [`Audit`] and writes it to the audit log
//! **in the same transaction** as the change, so the log and the data cannot
//! diverge; when the change fails, nothing is logged (log the failure with
//! [`Store::append_audit`]). The audit record also gives the change its
//! time and author: `created`, `issued_at`, `decided_at`, `decided_by`,
//! `declared_by`, a policy's `author` … are `audit.at` and `audit.actor`.
//! All times are unix seconds (`i64`); reads that depend on the time take
//! `now` explicitly.
//!
//! Writes are serialised: SQLite transactions start with `BEGIN IMMEDIATE`
//! (one writer at a time, across processes too); on PostgreSQL each write
//! transaction first locks the one-row `audit_head` table with
//! `SELECT … FOR UPDATE`, so two gateways on one database append to one
//! chain and never fork it.
//!
//! On PostgreSQL a store opened with [`Store::seal_later`] takes the chain
//! off the hot path: the writes of logins and sessions (each decided by one
//! atomic statement) run side by side and leave their record in
//! `audit_pending`, committed with the change; [`Store::seal_pending`]
//! (one gateway at a time, `pg_try_advisory_xact_lock`) moves them into the
//! chain in batches under the head lock. Readers of the chain see a record
//! once it is sealed, a fraction of a second later.
//!
//! # Schema
//!
//! Ids (users, devices, desks, sessions, plans, BCP declarations) are 1 to
//! 64 characters of `[A-Za-z0-9._-]`. The tables (SQLite types; PostgreSQL
//! uses `BIGINT`, `BYTEA` and `BOOLEAN`):
//!
//! | table | columns |
//! |---|---|
//! | `users` | `id` PK, `name`, `department`, `roles` (sorted comma list of staff/chief/officer/operator), `disabled`, `created` |
//! | `webauthn_credentials` | `cred_id` BLOB PK, `user_id` → users, `passkey` (opaque webauthn-rs JSON), `counter`, `attested`, `created`, `last_used` |
//! | `devices` | `id` PK, `class` home/mobile/satellite, `status` active/blocked/lost/revoked, `loaned_to` → users, `cert_serial`, `created` |
//! | `desks`, `desk_owners` | `id` PK, `department`, `level` 1..=3, `segment` lgwan/internet/mynumber, `created`; owners `(desk_id, user_id)` |
//! | `enrollment_codes` | `code_hash` PK (SHA-256 of the code, never the code), `user_id`, `created`, `expires_at`, `used_at` |
//! | `login_tokens` | `token_hash` PK, `user_id`, `device_id` → devices (the binding), `cert_serial`, `issued_at`, `expires_at`, `revoked_at` |
//! | `login_codes` | `code_hash` PK, `user_id`, `pkce_challenge` (S256), `created`, `expires_at`, `used_at` |
//! | `lockouts` | `counter_key` PK (`user:ID`, `source:IP`, `enroll:IP`), `failures`, `window_start`, `locked_until` |
//! | `telework_plans` | `id` PK, `user_id`, `day` YYYY-MM-DD, `start_min`, `end_min`, `place`, `status`, `submitted_at`, `decided_by`, `decided_at` |
//! | `bcp_declarations` | `id` PK, `scope` (`*` or a department), `reason`, `relax` (JSON text), `starts_at`, `ends_at`, `ended_at`, `declared_by`, `ended_by` |
//! | `policies` | `version` PK (1, 2, …), `body` (TOML), `author`, `created` |
//! | `sessions` | `id` PK, `user_id`, `device_id`, `desk_id`, `class`, `level`, `transport`, `started_at`, `ended_at`, `end_reason`, `bytes_up`, `bytes_down` (saved every few seconds while live), `gateway` (the member carrying it; no foreign keys: a historical record) |
//! | `gateway_members` | `id` PK (the gateway's name), `generation`, `laptop_addrs`, `agent_addrs`, `started_at`, `heartbeat_at` (its clock), `db_at`, `expires_at` (the database's clock), `sessions`, `agents`, `feed_seq`, `left_at`: presence, not audited |
//! | `audit` | `seq` PK, `at`, `actor`, `action`, `subject`, `reason`, `detail` (JSON text), `prev_hash`, `hash`; triggers refuse UPDATE and DELETE |
//! | `audit_head` | one row: `seq` and `hash` of the last record (0 and zeros when empty) |
//! | `audit_pending` | `id` PK (ascending), `at`, `actor`, `action`, `subject`, `reason`, `detail`: records committed with their change and not yet sealed into `audit` (PostgreSQL with [`Store::seal_later`] only) |
//!
//! Codes, login tokens and lockout counters are deleted a week after they
//! expire ([`Store::prune_expired`], hourly from every gateway); SQLite
//! reuses the freed pages, so the file stops growing with logins.
//!
//! # The audit hash chain
//!
//! Records are numbered `seq = 1, 2, 3, …` without gaps. Record `n` stores
//! `prev_hash` = the `hash` of record `n - 1` (32 zero bytes for record 1)
//! and `hash = SHA-256(E)`, where `E` is this byte string (`u32be`/`i64be`
//! are big-endian fixed-width integers, `‖` concatenation):
//!
//! ```text
//! E = u32be(18) ‖ "kakehashi-audit-v1"
//!   ‖ i64be(seq) ‖ i64be(at)
//!   ‖ u32be(len(actor))   ‖ actor
//!   ‖ u32be(len(action))  ‖ action
//!   ‖ u32be(len(subject)) ‖ subject
//!   ‖ u32be(len(reason))  ‖ reason
//!   ‖ u32be(len(detail))  ‖ detail
//!   ‖ prev_hash                       (32 raw bytes)
//! ```
//!
//! Text fields are UTF-8 and their lengths count bytes; `detail` is the
//! stored JSON text byte for byte (it is kept as TEXT, never re-serialised,
//! so key order and spacing do not matter). Every field is length-prefixed
//! or fixed-width, so no two different records share an encoding.
//! [`Store::verify_audit`] walks the chain in `seq` order and reports the
//! first break: `deleted` (a gap in `seq`, or the head says there were more
//! records), `reordered` (the record's hash is right for another position),
//! `edited` (the hash does not match the content), `bad link` (`prev_hash`
//! is not the previous record's hash). Someone able to rewrite the whole
//! table and recompute every hash is not detected by the chain alone: the
//! gateway signs checkpoints of the chain head with a key kept outside the
//! database, and [`Store::verify_audit_anchored`] checks the chain against
//! them (see [`Checkpoint`]).

#![warn(missing_docs, unreachable_pub, clippy::cast_possible_truncation)]

mod error;
mod types;

pub use error::{Error, Result};
pub use types::{
    validate_id, DeskService, DeviceClass, DeviceStatus, Hash256, PlanStatus, Role, Segment,
};

/// Runs `$body` against the pool of whichever backend the store uses; `$p`
/// is bound to `&SqlitePool` or `&PgPool` (the body is compiled for each).
macro_rules! read {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            $crate::db::Pool::Sqlite($p) => $body,
            $crate::db::Pool::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` in a serialised write transaction (`$tx` is the
/// transaction), appends `$audit` to the chain in the same transaction and
/// commits. Evaluates to `(body value, AuditRecord)`. An early return or
/// `?` in the body rolls everything back.
macro_rules! write_tx {
    // A write that is correct when others run at the same time (each of its
    // statements decides atomically, e.g. `UPDATE … WHERE used_at IS NULL`):
    // with [`Store::seal_later`] on PostgreSQL it does not take the chain
    // head; its audit record waits in `audit_pending` for the sealer, in the
    // same transaction as the change. Evaluates to `(body value, record)`,
    // the record's `seq` 0 while it waits.
    ($store:expr, $audit:expr, concurrent, |$tx:ident| $body:block) => {{
        match &$store.pool {
            $crate::db::Pool::Postgres(pool) if $store.seal_later => {
                let audit: &$crate::audit::Audit = &$audit;
                audit.validate()?;
                let mut $tx = pool.begin().await?;
                let out = $body;
                let record = $crate::audit::pending(audit);
                sqlx::query($crate::audit::INSERT_PENDING_SQL)
                    .bind(record.at)
                    .bind(&record.actor)
                    .bind(&record.action)
                    .bind(&record.subject)
                    .bind(&record.reason)
                    .bind(&record.detail)
                    .execute(&mut *$tx)
                    .await?;
                $tx.commit().await?;
                (out, record)
            }
            _ => write_tx!($store, $audit, |$tx| $body),
        }
    }};
    ($store:expr, $audit:expr, |$tx:ident| $body:block) => {{
        let audit: &$crate::audit::Audit = &$audit;
        audit.validate()?;
        match &$store.pool {
            $crate::db::Pool::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                write_tx!(@run $tx, audit, $crate::audit::HEAD_SQLITE, "", $body)
            }
            $crate::db::Pool::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                write_tx!(@run $tx, audit, $crate::audit::HEAD_POSTGRES, $crate::audit::NOTIFY_POSTGRES, $body)
            }
        }
    }};
    (@run $tx:ident, $audit:ident, $head_sql:expr, $notify_sql:expr, $body:block) => {{
        let (head_seq, head_hash): (i64, Vec<u8>) =
            sqlx::query_as($head_sql).fetch_one(&mut *$tx).await?;
        let out = $body;
        let record = $crate::audit::seal($audit, head_seq + 1, $crate::Hash256::try_from(head_hash)?);
        sqlx::query($crate::audit::INSERT_SQL)
            .bind(record.seq)
            .bind(record.at)
            .bind(&record.actor)
            .bind(&record.action)
            .bind(&record.subject)
            .bind(&record.reason)
            .bind(&record.detail)
            .bind(&record.prev_hash.0[..])
            .bind(&record.hash.0[..])
            .execute(&mut *$tx)
            .await?;
        sqlx::query($crate::audit::UPDATE_HEAD_SQL)
            .bind(record.seq)
            .bind(&record.hash.0[..])
            .execute(&mut *$tx)
            .await?;
        if !$notify_sql.is_empty() {
            // Delivered at commit, to every gateway following the feed.
            sqlx::query($notify_sql)
                .bind(record.seq.to_string())
                .execute(&mut *$tx)
                .await?;
        }
        $tx.commit().await?;
        (out, record)
    }};
}

pub mod attendance;
mod audit;
mod checkpoint;
mod cluster;
mod db;
mod identity;
mod inventory;
mod planning;
mod prune;
mod sessions;
mod transient;

pub mod export;
pub mod localtime;
pub mod sheet;

pub use audit::{Audit, AuditRecord, BreakKind, BrokenLink, VerifyReport};
pub use checkpoint::{
    key_id, AnchorProblem, AnchorReport, Checkpoint, CheckpointSource, CHECKPOINT_ACTION,
};
pub use cluster::{Beat, ChangeListener, Member, MemberSpec};
pub use db::{redact_url, Backend, Store, StoreUrl};
pub use identity::{
    Credential, LockState, LockoutRule, LoginCode, LoginToken, NewCredential, NewLoginCode,
    NewLoginToken, NewUser, User,
};
pub use inventory::{Desk, Device, DeviceSpec};
pub use localtime::unix_now;
pub use planning::{Bcp, BcpScope, BcpSpec, Plan, PlanSpec, PolicyDoc};
pub use prune::Pruned;
pub use sessions::{SessionEnd, SessionRecord, SessionStart, LOST as GATEWAY_LOST};
pub use transient::{Quotas, TransientKind, MAX_TRANSIENT_VALUE};
