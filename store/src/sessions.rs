//! Session records, for attendance reports and metrics.

use crate::audit::Audit;
use crate::db::Store;
use crate::error::{on_write, Error, Result};
use crate::types::{validate_id, validate_text, DeviceClass};

/// A session being admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    /// Session id (the ticket's).
    pub id: String,
    /// Who.
    pub user_id: String,
    /// From which device.
    pub device_id: String,
    /// To which desk.
    pub desk_id: String,
    /// The device's terminal class.
    pub class: DeviceClass,
    /// The desk's confidentiality level.
    pub level: u8,
    /// `quic` or `tcp` (free text id).
    pub transport: String,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The end reason code (`client_closed`, `device_blocked`, …).
    pub reason: String,
    /// Bytes from the terminal to the desk.
    pub bytes_up: u64,
    /// Bytes from the desk to the terminal.
    pub bytes_down: u64,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// Who.
    pub user_id: String,
    /// From which device.
    pub device_id: String,
    /// To which desk.
    pub desk_id: String,
    /// Terminal class.
    #[sqlx(try_from = "String")]
    pub class: DeviceClass,
    /// Confidentiality level.
    #[sqlx(try_from = "i64")]
    pub level: u8,
    /// Transport.
    pub transport: String,
    /// Start (unix seconds).
    pub started_at: i64,
    /// End, once ended.
    pub ended_at: Option<i64>,
    /// End reason, once ended.
    pub end_reason: Option<String>,
    /// Bytes up (set at the end).
    #[sqlx(try_from = "i64")]
    pub bytes_up: u64,
    /// Bytes down (set at the end).
    #[sqlx(try_from = "i64")]
    pub bytes_down: u64,
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a session start at `audit.at`.
    pub async fn start_session(&self, s: &SessionStart, audit: Audit) -> Result<SessionRecord> {
        validate_id("session id", &s.id)?;
        validate_id("transport", &s.transport)?;
        if !(1..=3).contains(&s.level) {
            return Err(Error::invalid("session level", "must be 1, 2 or 3"));
        }
        const SQL: &str = "INSERT INTO sessions (id, user_id, device_id, desk_id, class, level, \
             transport, started_at, ended_at, end_reason, bytes_up, bytes_down) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, 0, 0)";
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&s.id)
                .bind(&s.user_id)
                .bind(&s.device_id)
                .bind(&s.desk_id)
                .bind(s.class.as_str())
                .bind(i64::from(s.level))
                .bind(&s.transport)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("session"))?;
        });
        Ok(SessionRecord {
            id: s.id.clone(),
            user_id: s.user_id.clone(),
            device_id: s.device_id.clone(),
            desk_id: s.desk_id.clone(),
            class: s.class,
            level: s.level,
            transport: s.transport.clone(),
            started_at: audit.at,
            ended_at: None,
            end_reason: None,
            bytes_up: 0,
            bytes_down: 0,
        })
    }

    /// Records a session end at `audit.at`; a session ends once (`Conflict`).
    pub async fn end_session(
        &self,
        id: &str,
        end: &SessionEnd,
        audit: Audit,
    ) -> Result<SessionRecord> {
        validate_text("end reason", &end.reason, 128, false)?;
        const SQL: &str = "UPDATE sessions SET ended_at = $2, end_reason = $3, bytes_up = $4, \
             bytes_down = $5 WHERE id = $1 AND ended_at IS NULL \
             RETURNING id, user_id, device_id, desk_id, class, level, transport, started_at, \
             ended_at, end_reason, bytes_up, bytes_down";
        const EXISTS: &str = "SELECT COUNT(*) FROM sessions WHERE id = $1";
        let (rec, _) = write_tx!(self, audit, |tx| {
            let rec: Option<SessionRecord> = sqlx::query_as(SQL)
                .bind(id)
                .bind(audit.at)
                .bind(&end.reason)
                .bind(clamp(end.bytes_up))
                .bind(clamp(end.bytes_down))
                .fetch_optional(&mut *tx)
                .await?;
            match rec {
                Some(r) => r,
                None => {
                    let n: i64 = sqlx::query_scalar(EXISTS)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    return Err(if n == 0 {
                        Error::NotFound { what: "session" }
                    } else {
                        Error::Conflict {
                            what: "session",
                            state: "ended".into(),
                        }
                    });
                }
            }
        });
        Ok(rec)
    }

    /// The session with `id`.
    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        const SQL: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down FROM sessions WHERE id = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    /// Sessions overlapping `[since, until)` (started before `until`, not
    /// ended by `since`; open sessions included), by start time.
    pub async fn sessions_between(&self, since: i64, until: i64) -> Result<Vec<SessionRecord>> {
        const SQL: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down FROM sessions \
             WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1) \
             ORDER BY started_at, id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(since)
            .bind(until)
            .fetch_all(p)
            .await?))
    }

    /// Sessions not yet ended (after a crash: the ones to close with a reason).
    pub async fn open_sessions(&self) -> Result<Vec<SessionRecord>> {
        const SQL: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down FROM sessions \
             WHERE ended_at IS NULL ORDER BY started_at, id";
        Ok(read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?))
    }
}
