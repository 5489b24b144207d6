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
    /// The gateway carrying it (its cluster member id, the configured name).
    pub gateway: String,
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
    /// The gateway carrying it; `None` for a row written before clustering.
    pub gateway: Option<String>,
}

/// The end reason with which a surviving member closes the rows of a member
/// whose membership lapsed.
pub const LOST: &str = "gateway_lost";

/// Who records a session's end, which decides the rows it may end.
#[derive(Debug, Clone, Copy)]
enum Ender<'a> {
    /// An open row only.
    Anyone,
    /// The gateway that carried it: an open row, or its own row that a
    /// survivor closed as [`LOST`].
    Carrier(&'a str),
    /// A surviving member: an open row of this member, only while its
    /// membership has lapsed by the database's clock at the time given.
    Survivor(&'a str, i64),
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a session start at `audit.at`.
    pub async fn start_session(&self, s: &SessionStart, audit: Audit) -> Result<SessionRecord> {
        validate_id("session id", &s.id)?;
        validate_id("transport", &s.transport)?;
        validate_id("gateway", &s.gateway)?;
        if !(1..=3).contains(&s.level) {
            return Err(Error::invalid("session level", "must be 1, 2 or 3"));
        }
        const SQL: &str = "INSERT INTO sessions (id, user_id, device_id, desk_id, class, level, \
             transport, started_at, ended_at, end_reason, bytes_up, bytes_down, gateway) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, 0, 0, $9)";
        write_tx!(self, audit, concurrent, |tx| {
            sqlx::query(SQL)
                .bind(&s.id)
                .bind(&s.user_id)
                .bind(&s.device_id)
                .bind(&s.desk_id)
                .bind(s.class.as_str())
                .bind(i64::from(s.level))
                .bind(&s.transport)
                .bind(audit.at)
                .bind(&s.gateway)
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
            gateway: Some(s.gateway.clone()),
        })
    }

    /// Records a session end at `audit.at`; a session ends once (`Conflict`).
    pub async fn end_session(
        &self,
        id: &str,
        end: &SessionEnd,
        audit: Audit,
    ) -> Result<SessionRecord> {
        self.end_session_as(id, Ender::Anyone, end, audit).await
    }

    /// Records the end of a session by the gateway that carried it: like
    /// [`Store::end_session`], and besides, a row that another member
    /// closed with [`LOST`] while this gateway's membership had lapsed (it
    /// was cut off from the store, its sessions went on) takes the real end
    /// and byte counts. The audit log keeps both records.
    pub async fn end_carried_session(
        &self,
        id: &str,
        gateway: &str,
        end: &SessionEnd,
        audit: Audit,
    ) -> Result<SessionRecord> {
        self.end_session_as(id, Ender::Carrier(gateway), end, audit)
            .await
    }

    /// Closes the row of a session carried by `gateway` as
    /// [`LOST`] (`end.reason`), only while `gateway`'s membership has
    /// lapsed at `db_now` (the database's clock, as [`Store::members`] or
    /// [`Store::db_now`] gave it), checked in the same statement: a member
    /// that renewed since keeps its row (`Conflict`), so a survivor's
    /// reaping cannot cross the member's return.
    pub async fn end_lapsed_session(
        &self,
        id: &str,
        gateway: &str,
        db_now: i64,
        end: &SessionEnd,
        audit: Audit,
    ) -> Result<SessionRecord> {
        self.end_session_as(id, Ender::Survivor(gateway, db_now), end, audit)
            .await
    }

    async fn end_session_as(
        &self,
        id: &str,
        ender: Ender<'_>,
        end: &SessionEnd,
        audit: Audit,
    ) -> Result<SessionRecord> {
        validate_text("end reason", &end.reason, 128, false)?;
        // An open row, or (the carrier) its own row a survivor closed as lost.
        const OPEN_OR_LOST: &str = "UPDATE sessions SET ended_at = $2, end_reason = $3, \
             bytes_up = $4, bytes_down = $5 \
             WHERE id = $1 AND (ended_at IS NULL OR (gateway = $6 AND end_reason = $7)) \
             RETURNING id, user_id, device_id, desk_id, class, level, transport, started_at, \
             ended_at, end_reason, bytes_up, bytes_down, gateway";
        // An open row of member $6, only while it is lapsed by the database's clock $7.
        const OF_LAPSED: &str = "UPDATE sessions SET ended_at = $2, end_reason = $3, \
             bytes_up = $4, bytes_down = $5 \
             WHERE id = $1 AND ended_at IS NULL AND gateway = $6 AND NOT EXISTS \
             (SELECT 1 FROM gateway_members m WHERE m.id = $6 AND m.expires_at > $7) \
             RETURNING id, user_id, device_id, desk_id, class, level, transport, started_at, \
             ended_at, end_reason, bytes_up, bytes_down, gateway";
        const EXISTS: &str = "SELECT COUNT(*) FROM sessions WHERE id = $1";
        let (sql, gateway, db_now) = match ender {
            Ender::Anyone => (OPEN_OR_LOST, None, None),
            Ender::Carrier(g) => (OPEN_OR_LOST, Some(g), None),
            Ender::Survivor(g, now) => (OF_LAPSED, Some(g), Some(now)),
        };
        let (rec, _) = write_tx!(self, audit, concurrent, |tx| {
            let q = sqlx::query_as(sql)
                .bind(id)
                .bind(audit.at)
                .bind(&end.reason)
                .bind(clamp(end.bytes_up))
                .bind(clamp(end.bytes_down))
                .bind(gateway);
            let q = match db_now {
                Some(now) => q.bind(now),
                None => q.bind(LOST),
            };
            let rec: Option<SessionRecord> = q.fetch_optional(&mut *tx).await?;
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
                            state: "ended, or its gateway is alive".into(),
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
             started_at, ended_at, end_reason, bytes_up, bytes_down, gateway FROM sessions WHERE id = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    /// Sessions overlapping `[since, until)` (started before `until`, not
    /// ended by `since`; open sessions included), by start time.
    pub async fn sessions_between(&self, since: i64, until: i64) -> Result<Vec<SessionRecord>> {
        const SQL: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down, gateway FROM sessions \
             WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1) \
             ORDER BY started_at, id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(since)
            .bind(until)
            .fetch_all(p)
            .await?))
    }

    /// Open sessions carried by `gateway` (`None`: rows written before
    /// clustering, which name no gateway).
    pub async fn open_sessions_of(&self, gateway: Option<&str>) -> Result<Vec<SessionRecord>> {
        const OF: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down, gateway FROM sessions \
             WHERE ended_at IS NULL AND gateway = $1 ORDER BY started_at, id";
        const UNNAMED: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down, gateway FROM sessions \
             WHERE ended_at IS NULL AND gateway IS NULL ORDER BY started_at, id";
        Ok(match gateway {
            Some(g) => read!(self, |p| sqlx::query_as(OF).bind(g).fetch_all(p).await?),
            None => read!(self, |p| sqlx::query_as(UNNAMED).fetch_all(p).await?),
        })
    }

    /// Of `live`, the sessions `gateway` carries whose rows another member
    /// closed with [`LOST`] at or after `since` (unix seconds) while this
    /// gateway's membership had lapsed: reopens each (audited
    /// `session.resume`, one record per row, at `at`), so the store shows
    /// them live again. Returns the reopened ids.
    pub async fn reclaim_sessions(
        &self,
        gateway: &str,
        live: &[String],
        since: i64,
        at: i64,
    ) -> Result<Vec<String>> {
        const LOST_ROWS: &str = "SELECT id, ended_at FROM sessions \
             WHERE gateway = $1 AND end_reason = $2 AND ended_at >= $3";
        validate_id("gateway", gateway)?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let lost: Vec<(String, Option<i64>)> = read!(self, |p| sqlx::query_as(LOST_ROWS)
            .bind(gateway)
            .bind(LOST)
            .bind(since)
            .fetch_all(p)
            .await?);
        let live: std::collections::HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut reopened = Vec::new();
        for (id, closed_at) in lost {
            if !live.contains(id.as_str()) {
                continue;
            }
            let audit = Audit::new(at, "gateway", "session.resume")
                .subject(&id)
                .reason("gateway_back")
                .detail(serde_json::json!({ "gateway": gateway, "closed_at": closed_at }));
            match self.reopen_lost(&id, gateway, audit).await {
                Ok(()) => reopened.push(id),
                // Ended for real meanwhile (`end_carried_session`).
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(reopened)
    }

    async fn reopen_lost(&self, id: &str, gateway: &str, audit: Audit) -> Result<()> {
        const REOPEN: &str = "UPDATE sessions SET ended_at = NULL, end_reason = NULL \
             WHERE id = $1 AND gateway = $2 AND end_reason = $3";
        write_tx!(self, audit, concurrent, |tx| {
            let n = sqlx::query(REOPEN)
                .bind(id)
                .bind(gateway)
                .bind(LOST)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n != 1 {
                return Err(Error::Conflict {
                    what: "session",
                    state: "not closed as gateway_lost".into(),
                });
            }
        });
        Ok(())
    }

    /// Open sessions per gateway (`None`: rows that name no gateway).
    pub async fn open_session_counts(&self) -> Result<Vec<(Option<String>, i64)>> {
        const SQL: &str = "SELECT gateway, COUNT(*) FROM sessions WHERE ended_at IS NULL \
             GROUP BY gateway ORDER BY gateway";
        Ok(read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?))
    }

    /// Saves the bytes counted so far by live sessions, so that a gateway
    /// that dies is reaped with what it had relayed (up to the last save).
    /// Not audited (a counter, not a change); an ended session is left as
    /// its end recorded it.
    pub async fn save_session_progress(&self, progress: &[(String, u64, u64)]) -> Result<()> {
        const SQL: &str = "UPDATE sessions SET bytes_up = $2, bytes_down = $3 \
             WHERE id = $1 AND ended_at IS NULL";
        if progress.is_empty() {
            return Ok(());
        }
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for (id, up, down) in progress {
                    sqlx::query(SQL)
                        .bind(id)
                        .bind(clamp(*up))
                        .bind(clamp(*down))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match &self.pool {
            crate::db::Pool::Sqlite(p) => run!(p),
            crate::db::Pool::Postgres(p) => run!(p),
        }
        Ok(())
    }

    /// Sessions not yet ended (after a crash: the ones to close with a reason).
    pub async fn open_sessions(&self) -> Result<Vec<SessionRecord>> {
        const SQL: &str = "SELECT id, user_id, device_id, desk_id, class, level, transport, \
             started_at, ended_at, end_reason, bytes_up, bytes_down, gateway FROM sessions \
             WHERE ended_at IS NULL ORDER BY started_at, id";
        Ok(read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?))
    }
}
