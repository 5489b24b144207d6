//! Cluster membership: one row per gateway in `gateway_members`, kept
//! alive by heartbeats. Presence is not a change: heartbeats update the row
//! in place and never go through the audit log (the change feed); joining
//! and leaving are audited.
//!
//! Expiry is judged by the database's clock (`db_at`, `expires_at`), one
//! clock for every member, so a gateway whose own clock is off neither
//! expires early nor lives on; its own clock is kept beside it
//! (`heartbeat_at`) so `cluster status` can flag the skew.

use crate::audit::Audit;
use crate::db::{Pool, Store};
use crate::error::{on_write, Error, Result};
use crate::types::validate_id;

/// The most addresses a member advertises for each role.
const MAX_ADDRS: usize = 16;

/// What a gateway says of itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Its id (the configured gateway name, unique in the cluster).
    pub id: String,
    /// Where laptops reach it (`host:port`).
    pub laptop_addrs: Vec<String>,
    /// Where agents reach it (`host:port`).
    pub agent_addrs: Vec<String>,
}

/// What a member reports at each heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Beat {
    /// Its own clock (unix seconds).
    pub now: i64,
    /// Live sessions it carries.
    pub sessions: u64,
    /// Agents with a tunnel to it.
    pub agents: u64,
    /// The last audit sequence its change feed has applied.
    pub feed_seq: i64,
}

/// A member as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// 1 at its first start, one more at each start since.
    pub generation: i64,
    /// Where laptops reach it.
    pub laptop_addrs: Vec<String>,
    /// Where agents reach it.
    pub agent_addrs: Vec<String>,
    /// When this generation started (database clock).
    pub started_at: i64,
    /// Its own clock at its last heartbeat.
    pub heartbeat_at: i64,
    /// The database's clock at its last heartbeat.
    pub db_at: i64,
    /// When its membership lapses without another heartbeat (database clock).
    pub expires_at: i64,
    /// Live sessions at its last heartbeat.
    pub sessions: i64,
    /// Agents at its last heartbeat.
    pub agents: i64,
    /// Its change feed's position at its last heartbeat.
    pub feed_seq: i64,
    /// When it left on purpose (database clock).
    pub left_at: Option<i64>,
}

impl Member {
    /// Alive at database time `db_now`: not left and not expired.
    pub fn alive(&self, db_now: i64) -> bool {
        self.left_at.is_none() && self.expires_at > db_now
    }

    /// Its membership has lapsed at database time `db_now`: the sessions
    /// it carried can be closed by the others. A member that left on
    /// purpose keeps heartbeating while it drains, so its sessions are not
    /// reaped before it is gone.
    pub fn lapsed(&self, db_now: i64) -> bool {
        self.expires_at <= db_now
    }

    /// Its clock minus the database's, at its last heartbeat (seconds).
    pub fn clock_skew(&self) -> i64 {
        self.heartbeat_at - self.db_at
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    generation: i64,
    laptop_addrs: String,
    agent_addrs: String,
    started_at: i64,
    heartbeat_at: i64,
    db_at: i64,
    expires_at: i64,
    sessions: i64,
    agents: i64,
    feed_seq: i64,
    left_at: Option<i64>,
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

impl From<Row> for Member {
    fn from(r: Row) -> Self {
        Member {
            id: r.id,
            generation: r.generation,
            laptop_addrs: split(&r.laptop_addrs),
            agent_addrs: split(&r.agent_addrs),
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
            db_at: r.db_at,
            expires_at: r.expires_at,
            sessions: r.sessions,
            agents: r.agents,
            feed_seq: r.feed_seq,
            left_at: r.left_at,
        }
    }
}

fn join_addrs(what: &'static str, addrs: &[String]) -> Result<String> {
    if addrs.len() > MAX_ADDRS {
        return Err(Error::invalid(what, "at most 16 addresses"));
    }
    for a in addrs {
        let ok = !a.is_empty()
            && a.len() <= 253
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
        if !ok {
            return Err(Error::invalid(what, "host:port, without commas or spaces"));
        }
    }
    Ok(addrs.join(","))
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// The database's clock (unix seconds): the one clock membership expiry
    /// is judged by.
    pub async fn db_now(&self) -> Result<i64> {
        const SQLITE: &str = "SELECT CAST(strftime('%s', 'now') AS INTEGER)";
        const POSTGRES: &str = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)";
        Ok(match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(SQLITE).fetch_one(p).await?,
            Pool::Postgres(p) => sqlx::query_scalar(POSTGRES).fetch_one(p).await?,
        })
    }

    /// Joins the cluster (audited, `gateway.join`): inserts the member or,
    /// when its id was seen before, starts its next generation. Returns the
    /// generation; a previous process of the same id that still heartbeats
    /// is told by [`Store::heartbeat`] that it was replaced.
    pub async fn join_cluster(
        &self,
        spec: &MemberSpec,
        ttl_secs: i64,
        audit: Audit,
    ) -> Result<i64> {
        validate_id("gateway", &spec.id)?;
        let laptops = join_addrs("laptop addresses", &spec.laptop_addrs)?;
        let agents = join_addrs("agent addresses", &spec.agent_addrs)?;
        let db_now = self.db_now().await?;
        const SQL: &str =
            "INSERT INTO gateway_members (id, generation, laptop_addrs, agent_addrs, \
             started_at, heartbeat_at, db_at, expires_at, sessions, agents, feed_seq, left_at) \
             VALUES ($1, 1, $2, $3, $4, $5, $4, $6, 0, 0, 0, NULL) \
             ON CONFLICT (id) DO UPDATE SET generation = gateway_members.generation + 1, \
             laptop_addrs = excluded.laptop_addrs, agent_addrs = excluded.agent_addrs, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             db_at = excluded.db_at, expires_at = excluded.expires_at, sessions = 0, agents = 0, \
             feed_seq = 0, left_at = NULL \
             RETURNING generation";
        let (generation, _) = write_tx!(self, audit, |tx| {
            let g: i64 = sqlx::query_scalar(SQL)
                .bind(&spec.id)
                .bind(&laptops)
                .bind(&agents)
                .bind(db_now)
                .bind(audit.at)
                .bind(db_now.saturating_add(ttl_secs))
                .fetch_one(&mut *tx)
                .await
                .map_err(on_write("gateway member"))?;
            g
        });
        Ok(generation)
    }

    /// Renews `id`'s membership for `ttl_secs` (not audited); a member
    /// that left keeps heartbeating while it drains. Returns `false` when
    /// the row belongs to another generation: a newer process took the id.
    pub async fn heartbeat(
        &self,
        id: &str,
        generation: i64,
        beat: &Beat,
        ttl_secs: i64,
    ) -> Result<bool> {
        let db_now = self.db_now().await?;
        const SQL: &str = "UPDATE gateway_members SET heartbeat_at = $3, db_at = $4, \
             expires_at = $5, sessions = $6, agents = $7, feed_seq = $8 \
             WHERE id = $1 AND generation = $2";
        let n = read!(self, |p| sqlx::query(SQL)
            .bind(id)
            .bind(generation)
            .bind(beat.now)
            .bind(db_now)
            .bind(db_now.saturating_add(ttl_secs))
            .bind(clamp(beat.sessions))
            .bind(clamp(beat.agents))
            .bind(beat.feed_seq)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Leaves the cluster on purpose (audited, `gateway.leave`); only the
    /// generation that joined can leave.
    pub async fn leave_cluster(&self, id: &str, generation: i64, audit: Audit) -> Result<()> {
        let db_now = self.db_now().await?;
        const SQL: &str = "UPDATE gateway_members SET left_at = $3 \
             WHERE id = $1 AND generation = $2 AND left_at IS NULL";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(generation)
                .bind(db_now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n != 1 {
                return Err(Error::NotFound {
                    what: "gateway member",
                });
            }
        });
        Ok(())
    }

    /// Every member ever seen (alive or not), by id, with the database's
    /// clock to judge them by.
    pub async fn members(&self) -> Result<(Vec<Member>, i64)> {
        let db_now = self.db_now().await?;
        const SQL: &str = "SELECT id, generation, laptop_addrs, agent_addrs, started_at, \
             heartbeat_at, db_at, expires_at, sessions, agents, feed_seq, left_at \
             FROM gateway_members ORDER BY id";
        let rows: Vec<Row> = read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?);
        Ok((rows.into_iter().map(Member::from).collect(), db_now))
    }
}

/// Wakes a change feed when another gateway (or the CLI) appends to the
/// audit log: PostgreSQL `LISTEN kakehashi_audit`, notified in the same
/// transaction as each record. A wake-up only says "read the log": the
/// follower reads by sequence from where it was, so a lost notification or
/// connection costs latency, never a change. SQLite has no such signal (one
/// gateway per file): there the follower polls.
#[derive(Debug)]
pub struct ChangeListener {
    inner: sqlx::postgres::PgListener,
}

impl ChangeListener {
    /// Waits for the next wake-up. `Ok(true)`: a notification; `Ok(false)`:
    /// the connection was lost and is being re-established (treat as a gap:
    /// read the log now). An error means the database is unreachable; the
    /// caller retries later.
    pub async fn wait(&mut self) -> Result<bool> {
        let woke = self.inner.try_recv().await?.is_some();
        // One read of the log serves every notification already here.
        while self.inner.next_buffered().is_some() {}
        Ok(woke)
    }
}

impl Store {
    /// A [`ChangeListener`] on PostgreSQL; `None` on SQLite.
    pub async fn listen_changes(&self) -> Result<Option<ChangeListener>> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(p) => {
                let mut inner = sqlx::postgres::PgListener::connect_with(p).await?;
                inner.listen("kakehashi_audit").await?;
                Ok(Some(ChangeListener { inner }))
            }
        }
    }
}
