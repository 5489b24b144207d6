//! `kakehashi-gateway cluster …`: the gateways sharing this store.

use std::path::Path;

use clap::Subcommand;
use kakehashi_store::Member;

use super::open_store;

/// A member clock further than this from the database's is flagged.
const SKEW_LIMIT_SECS: i64 = 30;

/// `cluster …`
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every gateway that joined this store: alive or not, its sessions and
    /// agents, how far its change feed lags, and whether its clock is off.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// One member as `cluster status` shows it.
#[derive(Debug, serde::Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    member: &'a Member,
    state: &'static str,
    /// Open session rows in the store that name it.
    open_rows: i64,
    /// Audit records its change feed has not applied (at its last heartbeat).
    feed_lag: i64,
    /// Seconds since its last heartbeat (database clock).
    heartbeat_age: i64,
    /// Its clock is off by more than 30 s.
    clock_flagged: bool,
}

fn state(m: &Member, now: i64) -> &'static str {
    match (m.alive(now), m.left_at.is_some(), m.lapsed(now)) {
        (true, _, _) => "alive",
        (false, true, false) => "draining",
        (false, true, true) => "left",
        (false, false, _) => "LAPSED",
    }
}

/// Run a `cluster` command on the store of the gateway configuration `config`.
pub async fn run(config: &Path, cmd: ClusterCmd) -> anyhow::Result<()> {
    let (_, store) = open_store(config).await?;
    let ClusterCmd::Status { json } = cmd;
    let (members, now) = store.members().await?;
    let counts = store.open_session_counts().await?;
    let (head, _) = store.audit_head().await?;
    let rows: Vec<Row<'_>> = members
        .iter()
        .map(|m| Row {
            member: m,
            state: state(m, now),
            open_rows: counts
                .iter()
                .find(|(g, _)| g.as_deref() == Some(m.id.as_str()))
                .map_or(0, |(_, n)| *n),
            feed_lag: (head - m.feed_seq).max(0),
            heartbeat_age: now - m.db_at,
            clock_flagged: m.clock_skew().abs() > SKEW_LIMIT_SECS,
        })
        .collect();
    let unowned = counts
        .iter()
        .find(|(g, _)| g.is_none())
        .map_or(0, |(_, n)| *n);
    if json {
        let out = serde_json::json!({
            "db_now": now, "audit_head": head, "members": rows,
            "open_rows_without_gateway": unowned,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let alive = rows.iter().filter(|r| r.state == "alive").count();
    println!(
        "{} member(s), {alive} alive; audit log at record {head}",
        rows.len()
    );
    println!(
        "{:<16} {:<9} {:>4} {:>9} {:>9} {:>7} {:>9} {:>8} {:>9}  laptops / agents",
        "member",
        "state",
        "gen",
        "sessions",
        "open rows",
        "agents",
        "feed lag",
        "skew s",
        "beat ago"
    );
    for r in &rows {
        let m = r.member;
        println!(
            "{:<16} {:<9} {:>4} {:>9} {:>9} {:>7} {:>9} {:>8} {:>9}  {} / {}",
            m.id,
            r.state,
            m.generation,
            m.sessions,
            r.open_rows,
            m.agents,
            r.feed_lag,
            format!("{:+}", m.clock_skew()),
            format!("{}s", r.heartbeat_age),
            m.laptop_addrs.join(","),
            m.agent_addrs.join(","),
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.clock_flagged && r.state == "alive")
    {
        println!(
            "warning: {}'s clock is {:+} s off the database's (more than {SKEW_LIMIT_SECS} s): fix its NTP; tickets, login windows and plan hours it decides are off by as much",
            r.member.id,
            r.member.clock_skew()
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.state == "LAPSED" && r.open_rows > 0)
    {
        println!(
            "warning: {} has lapsed with {} session row(s) open; an alive member closes them within a heartbeat (gateway_lost)",
            r.member.id, r.open_rows
        );
    }
    if unowned > 0 {
        println!("{unowned} open session row(s) name no gateway (written before clustering); the next gateway to start alone closes them");
    }
    Ok(())
}
