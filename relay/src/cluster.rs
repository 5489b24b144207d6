//! Membership of the cluster of gateways sharing one store: joining at
//! start (and closing the rows this gateway's previous run left open),
//! heartbeats with this gateway's counts and the bytes its live sessions
//! have relayed, closing the rows of members whose membership lapsed, and
//! leaving when the gateway drains.
//!
//! One gateway on SQLite is a cluster of one: the same code runs, and
//! `kakehashi-gateway cluster status` shows it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kakehashi_proto::members::{
    self, ListedMember, MemberList, MAX_MEMBERS, MEMBER_LIST_FORMAT, MEMBER_LIST_LIFETIME_SECS,
    MEMBER_LIST_RESEND_SECS,
};
use kakehashi_proto::{frame, FrameKind};
use kakehashi_store::{Audit, Beat, Member, MemberSpec, SessionEnd, SessionRecord, Store};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::shared::{BoundAddrs, Shared};

/// How often a member renews its membership.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a membership lasts without a heartbeat (seconds): a member
/// dead for this long has its sessions closed by the others.
pub const MEMBERSHIP_TTL: i64 = 10;

/// How long a member must have renewed its own membership without a
/// break before it closes a lapsed member's sessions. After an outage of
/// the store that outlasted [`MEMBERSHIP_TTL`], every member looks lapsed
/// to the first one back; the others renew within a heartbeat or two, and
/// only a member still lapsed after this long is dead.
pub const REAP_AFTER_HEALTHY: Duration = Duration::from_secs(MEMBERSHIP_TTL as u64 + 4);

/// The end reason of a session whose gateway died: recorded by a surviving
/// member once the dead one's membership lapsed.
pub const REASON_GATEWAY_LOST: &str = kakehashi_store::GATEWAY_LOST;

/// The end reason of a session a gateway's previous run left open (it was
/// killed, or lost power), recorded when it starts again.
pub const REASON_GATEWAY_RESTART: &str = "gateway_restart";

/// When the first prune of expired codes and tokens runs after a start,
/// and how often after that.
const FIRST_PRUNE: Duration = Duration::from_secs(60);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long after expiring a code or token is kept: a token that expired
/// (or was revoked) this week still answers `token_expired` /
/// `token_revoked` rather than "unknown".
const PRUNE_GRACE_SECS: i64 = 7 * 86_400;

/// Delete expired login and enrollment codes, login tokens, idle lockout
/// counters and transient state (every gateway runs it; each row goes once).
async fn prune(store: &Store) {
    let now = kakehashi_store::unix_now();
    let a = Audit::new(now, "gateway", "store.prune").reason("expired");
    match store.prune_expired(now, PRUNE_GRACE_SECS, a).await {
        Ok(p) if p.total() > 0 => info!(
            login_codes = p.login_codes,
            enrollment_codes = p.enrollment_codes,
            login_tokens = p.login_tokens,
            lockouts = p.lockouts,
            "Deleted expired codes, tokens and lockout counters"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Cannot delete expired codes and tokens"),
    }
    // Ceremonies, portal sessions and step-ups that lapsed (not audited:
    // the state, not an event).
    match store.prune_transient(now).await {
        Ok(0) => {}
        Ok(n) => debug!(
            rows = n,
            "Deleted expired portal ceremonies, sessions and step-ups"
        ),
        Err(e) => warn!(error = %e, "Cannot delete expired portal ceremonies and sessions"),
    }
}

/// What this gateway tells the cluster of itself: the advertised
/// addresses, else the bound ones.
fn spec(cfg: &Config, addrs: &BoundAddrs) -> MemberSpec {
    let bound = |a: [Option<SocketAddr>; 2]| -> Vec<String> {
        let mut v: Vec<String> = a.into_iter().flatten().map(|a| a.to_string()).collect();
        v.dedup();
        v
    };
    let pick = |advertised: &Vec<String>, a| {
        if advertised.is_empty() {
            bound(a)
        } else {
            advertised.clone()
        }
    };
    MemberSpec {
        id: cfg.name.clone(),
        laptop_addrs: pick(
            &cfg.advertise_terminals,
            [addrs.terminal_tcp, addrs.terminal_quic],
        ),
        agent_addrs: pick(&cfg.advertise_agents, [addrs.agent_tcp, addrs.agent_quic]),
    }
}

/// Join the cluster, and find the rows this gateway's previous run left
/// open (to close with [`close_left_open`] once serving: read before any
/// session of this run starts). Rows that name no gateway (written before
/// clustering) are included only when no other member is alive to carry
/// them. Returns the generation and those rows.
pub(crate) async fn join(
    store: &Store,
    cfg: &Config,
    addrs: &BoundAddrs,
) -> anyhow::Result<(i64, Vec<SessionRecord>)> {
    let spec = spec(cfg, addrs);
    let a = Audit::new(kakehashi_store::unix_now(), "gateway", "gateway.join")
        .subject(&spec.id)
        .detail(serde_json::json!({
            "laptops": spec.laptop_addrs, "agents": spec.agent_addrs,
            "version": env!("CARGO_PKG_VERSION"),
        }));
    let generation = store
        .join_cluster(&spec, MEMBERSHIP_TTL, a)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot join the cluster as {:?}: {e} (the gateway `name` must be 1 to 64 of A-Z a-z 0-9 . _ -, unique among the gateways sharing the store)",
                spec.id
            )
        })?;
    info!(member = %spec.id, generation, laptops = ?spec.laptop_addrs, agents = ?spec.agent_addrs, "Joined the cluster");
    let mut open = store.open_sessions_of(Some(&spec.id)).await?;
    let (members, now) = store.members().await?;
    if !members.iter().any(|m| m.id != spec.id && m.alive(now)) {
        open.extend(store.open_sessions_of(None).await?);
    }
    Ok((generation, open))
}

/// Close the rows this gateway's previous run left open (it was killed,
/// or lost power) with `gateway_restart` and the bytes saved with them.
pub(crate) async fn close_left_open(store: Store, rows: Vec<SessionRecord>) {
    let started = Instant::now();
    let closed = close_rows(&store, &rows, REASON_GATEWAY_RESTART, None).await;
    if closed > 0 {
        warn!(
            closed,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Closed the sessions this gateway's previous run left open (it did not stop cleanly)"
        );
    }
}

/// Close `rows` with `reason` and the bytes saved with them; a row another
/// member closed first is skipped. With `lapsed_at` (the database's clock
/// when the member was seen lapsed), a row is closed only while its member
/// is still lapsed. Returns how many this call closed.
async fn close_rows(
    store: &Store,
    rows: &[SessionRecord],
    reason: &str,
    lapsed_at: Option<i64>,
) -> usize {
    let mut closed = 0;
    for rec in rows {
        let end = SessionEnd {
            reason: reason.into(),
            bytes_up: rec.bytes_up,
            bytes_down: rec.bytes_down,
        };
        let a = Audit::new(kakehashi_store::unix_now(), "gateway", "session.end")
            .subject(&rec.id)
            .reason(reason)
            .detail(serde_json::json!({
                "desk": rec.desk_id, "device": rec.device_id, "gateway": rec.gateway,
                "bytes_up": rec.bytes_up, "bytes_down": rec.bytes_down,
            }));
        // A lapsed member's row is closed only while it is still lapsed
        // (checked in the same statement): one that came back keeps it.
        let r = match (&rec.gateway, lapsed_at) {
            (Some(g), Some(now)) => store.end_lapsed_session(&rec.id, g, now, &end, a).await,
            _ => store.end_session(&rec.id, &end, a).await,
        };
        match r {
            Ok(_) => closed += 1,
            Err(kakehashi_store::Error::Conflict { .. }) => {}
            Err(e) => warn!(session = %rec.id, error = %e, "Cannot close a session left open"),
        }
    }
    closed
}

/// How often a gateway on PostgreSQL moves waiting audit records into the
/// chain ([`Store::seal_pending`]); every member tries, one seals at a time.
pub const SEAL_EVERY: Duration = Duration::from_millis(100);

/// Seals the audit records that logins and sessions left in
/// `audit_pending` (PostgreSQL; see `Store::seal_later`), every
/// [`SEAL_EVERY`] until the forced step of the shutdown, then once more so
/// this gateway's last records are in the chain when it exits (another
/// member, or the next start, would seal them otherwise).
pub(crate) async fn seal(s: Arc<Shared>) {
    let Some(store) = s.store.clone() else { return };
    if store.backend() != kakehashi_store::Backend::Postgres {
        return;
    }
    let mut tick = tokio::time::interval(SEAL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            _ = s.shutdown.forced() => true,
            _ = tick.tick() => false,
        };
        match store.seal_pending().await {
            Ok(n) => {
                if failing {
                    failing = false;
                    info!("Sealing audit records again");
                }
                if n > 0 {
                    debug!(records = n, "Audit records sealed into the chain");
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "Cannot seal audit records; they wait in the store (another gateway, or this one once the database answers, seals them)");
            }
            Err(_) => {}
        }
        if last {
            return;
        }
    }
}

/// Heartbeats until the forced step of the shutdown; leaves the cluster
/// when draining starts (and keeps heartbeating while it drains, so the
/// others do not close sessions it still carries).
pub(crate) async fn run(s: Arc<Shared>, generation: i64) {
    let Some(store) = s.store.clone() else { return };
    let id = s.cfg.name.clone();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved: HashMap<String, (u64, u64)> = HashMap::new();
    let mut left = false;
    let mut replaced = false;
    let mut failing_since: Option<Instant> = None;
    // Since when this member's heartbeats have all succeeded, and the last
    // one that did.
    let mut healthy_since = Some(Instant::now());
    let mut last_renewed = Instant::now();
    let mut reclaims = 0u8;
    let mut next_prune = Instant::now() + FIRST_PRUNE;
    let mut published = Published::default();
    loop {
        tokio::select! {
            _ = s.shutdown.forced() => return,
            _ = s.shutdown.draining(), if !left => {
                left = true;
                let a = Audit::new(kakehashi_store::unix_now(), "gateway", "gateway.leave")
                    .subject(&id)
                    .reason("shutdown");
                match store.leave_cluster(&id, generation, a).await {
                    Ok(()) => info!(member = %id, "Left the cluster; draining"),
                    Err(e) => warn!(member = %id, error = %e, "Cannot record leaving the cluster"),
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        s.metrics
            .ends_unrecorded
            .set(i64::try_from(s.unrecorded_ends.len()).unwrap_or(i64::MAX));
        let beat = Beat {
            now: kakehashi_store::unix_now(),
            sessions: s.live.lock().expect("live lock").len() as u64,
            agents: s.agents.lock().expect("agents lock").len() as u64,
            feed_seq: s.feed_seq.load(Ordering::Relaxed),
        };
        match store
            .heartbeat(&id, generation, &beat, MEMBERSHIP_TTL)
            .await
        {
            Ok(true) => {
                healthy_since.get_or_insert_with(Instant::now);
                // After a gap that may have let the membership lapse,
                // re-claim at this renewal and the next: a survivor's close
                // that began before this renewal may commit after the
                // first re-claim read the rows.
                if last_renewed.elapsed() >= RECLAIM_AFTER {
                    reclaims = 2;
                }
                if reclaims > 0 {
                    reclaims -= 1;
                    reclaim(&s, &store, &id).await;
                }
                last_renewed = Instant::now();
                if let Some(since) = failing_since.take() {
                    info!(
                        secs = since.elapsed().as_secs(),
                        "Cluster heartbeats resumed"
                    );
                }
                s.metrics.store_up.set(1);
            }
            Ok(false) => {
                if !replaced {
                    replaced = true;
                    error!(member = %id, generation, "Another gateway process started with this name: two gateways must not share a `name`; this one no longer counts as a member");
                }
            }
            Err(e) => {
                s.metrics.store_up.set(0);
                healthy_since = None;
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    warn!(error = %e, "Cannot renew the cluster membership; live sessions go on");
                }
                continue;
            }
        }
        s.unrecorded_ends.record(&store, &id).await;
        s.metrics
            .ends_unrecorded
            .set(i64::try_from(s.unrecorded_ends.len()).unwrap_or(i64::MAX));
        save_progress(&s, &store, &mut saved).await;
        let may_reap = healthy_since.is_some_and(|t| t.elapsed() >= REAP_AFTER_HEALTHY);
        reap_lapsed(&s, &store, &id, may_reap, &mut published).await;
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            prune(&store).await;
        }
        if let Ok((head, _)) = store.audit_head().await {
            s.metrics
                .feed_lag
                .set((head - s.feed_seq.load(Ordering::Relaxed)).max(0));
        }
    }
}

/// A member that renews its membership this long after its last renewal
/// may have lapsed meanwhile (the others close a lapsed member's rows), so
/// it re-claims its live sessions' rows ([`reclaim`]).
pub const RECLAIM_AFTER: Duration = Duration::from_secs(MEMBERSHIP_TTL as u64 - 2);

/// This gateway renewed its membership after a gap long enough for it to
/// have lapsed (cut off from the store while the others were not, or the
/// process stalled): the sessions it carried on meanwhile may have had
/// their rows closed by another member as `gateway_lost`. Reopen them, so
/// the store shows them live and their real end is recorded when it comes
/// (the audit log keeps the closing and the `session.resume`).
async fn reclaim(s: &Shared, store: &Store, me: &str) {
    let (ids, oldest) = {
        let live = s.live.lock().expect("live lock");
        let oldest = live.values().map(|l| l.started).min();
        (live.keys().cloned().collect::<Vec<_>>(), oldest)
    };
    let Some(oldest) = oldest else { return };
    // A member's rows are closed with its own clock's time: allow for skew.
    let since = oldest.saturating_sub(300);
    match store
        .reclaim_sessions(me, &ids, since, kakehashi_store::unix_now())
        .await
    {
        Ok(r) if r.is_empty() => {}
        Ok(r) => warn!(
            reopened = r.len(),
            "This gateway's membership had lapsed and another member closed the rows of sessions it still carries: reopened them"
        ),
        Err(e) => warn!(error = %e, "Cannot re-claim the rows of this gateway's live sessions"),
    }
}

/// Save the bytes of live sessions that moved since the last save.
async fn save_progress(s: &Shared, store: &Store, saved: &mut HashMap<String, (u64, u64)>) {
    let now: Vec<(String, (u64, u64))> = {
        let live = s.live.lock().expect("live lock");
        live.iter()
            .map(|(id, l)| (id.clone(), l.counters.get()))
            .collect()
    };
    let changed: Vec<(String, u64, u64)> = now
        .iter()
        .filter(|(id, c)| saved.get(id) != Some(c))
        .map(|(id, (up, down))| (id.clone(), *up, *down))
        .collect();
    match store.save_session_progress(&changed).await {
        Ok(()) => *saved = now.into_iter().collect(),
        Err(e) => warn!(error = %e, "Cannot save session byte counts"),
    }
}

/// Show every member in the metrics, tell the agents the live members
/// when they changed (or the last list nears its expiry), and close the
/// open rows of members whose membership lapsed.
async fn reap_lapsed(
    s: &Shared,
    store: &Store,
    me: &str,
    may_reap: bool,
    published: &mut Published,
) {
    let (counts, (members, now)) = match (store.open_session_counts().await, store.members().await)
    {
        (Ok(c), Ok(m)) => (c, m),
        (Err(e), _) | (_, Err(e)) => return warn!(error = %e, "Cannot read the cluster members"),
    };
    publish_members(s, &members, now, published);
    for m in &members {
        if m.left_at.is_some() && !m.alive(now) {
            // Left on purpose: not missing, so no series (and no alert).
            let _ = s.metrics.member_up.remove_label_values(&[&m.id]);
            let _ = s.metrics.member_sessions.remove_label_values(&[&m.id]);
            continue;
        }
        let alive = m.alive(now);
        s.metrics
            .member_up
            .with_label_values(&[&m.id])
            .set(i64::from(alive));
        s.metrics
            .member_sessions
            .with_label_values(&[&m.id])
            .set(if alive { m.sessions } else { 0 });
    }
    if !may_reap {
        // Just started, or just back from a store outage: the others may
        // not have had the time to renew (see REAP_AFTER_HEALTHY).
        return;
    }
    for (gateway, n) in counts {
        let Some(gateway) = gateway else { continue };
        if gateway == me {
            continue;
        }
        // A row naming a gateway that never joined (a row written by hand)
        // is left alone; a lapsed member's rows are closed.
        let Some(m) = members.iter().find(|m| m.id == gateway) else {
            continue;
        };
        if !m.lapsed(now) {
            continue;
        }
        let rows = match store.open_sessions_of(Some(&gateway)).await {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "Cannot read a lapsed member's sessions"),
        };
        let closed = close_rows(store, &rows, REASON_GATEWAY_LOST, Some(now)).await;
        if closed > 0 {
            warn!(member = %gateway, open = n, closed, "A gateway's membership lapsed: closed the sessions it carried");
        }
    }
}

/// The member list last sent to the agents: resent when the live members
/// change, and re-signed every [`MEMBER_LIST_RESEND_SECS`] so it never
/// expires while the gateway runs.
#[derive(Debug, Default)]
struct Published {
    members: Vec<ListedMember>,
    at: Option<Instant>,
}

/// The host part of `host:port` (brackets removed for IPv6).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// How agents dial `m`: its first agent address on TCP, its second (else
/// the first) on QUIC, the certificate name being the host part. `None`
/// when it advertises no address or a wildcard one (an agent cannot dial
/// `0.0.0.0`: set `[relay.agents] advertise`).
fn listed(m: &Member) -> Option<ListedMember> {
    let tcp = m.agent_addrs.first()?.clone();
    let quic = m.agent_addrs.get(1).cloned().unwrap_or_else(|| tcp.clone());
    let host = host_of(&tcp);
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return None;
    }
    Some(ListedMember {
        id: m.id.clone(),
        server_name: host.to_string(),
        tcp,
        quic,
    })
}

/// Sign the live members (version: the database's clock `db_now` at which
/// they were read), keep the list for tunnels that open later, and queue it
/// for every agent that takes it when it changed or is due for a resend.
fn publish_members(s: &Shared, all: &[Member], db_now: i64, published: &mut Published) {
    let mut live: Vec<ListedMember> = all
        .iter()
        .filter(|m| m.alive(db_now))
        .filter_map(listed)
        .collect();
    if live.len() > MAX_MEMBERS {
        warn!(
            members = live.len(),
            listed = MAX_MEMBERS,
            "More live members than a member list holds; agents are told the first by name"
        );
        live.truncate(MAX_MEMBERS);
    }
    let changed = live != published.members;
    let due = published
        .at
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(MEMBER_LIST_RESEND_SECS));
    // Signed at every heartbeat (a tunnel that opens gets a fresh list: its
    // version no older than what other gateways sent), sent to the agents
    // on a change or when due.
    let now = u64::try_from(kakehashi_store::unix_now()).unwrap_or(0);
    let list = MemberList {
        v: MEMBER_LIST_FORMAT,
        version: u64::try_from(db_now).unwrap_or(0),
        gateway: s.cfg.name.clone(),
        issued_at: now,
        expires_at: now + MEMBER_LIST_LIFETIME_SECS,
        members: live,
    };
    let encoded = members::sign(&s.signer, &list)
        .map_err(|e| e.to_string())
        .and_then(|b| frame::encode(FrameKind::MemberList, &b).map_err(|e| e.to_string()));
    let f = match encoded {
        Ok(f) => f,
        Err(e) => return warn!(error = %e, "Cannot sign the member list"),
    };
    *s.member_list.lock().expect("member list lock") = Some(Arc::new(f.clone()));
    if !changed && !due {
        return;
    }
    let told = crate::agents::tell_agents(s, &f);
    let ids: Vec<&str> = list.members.iter().map(|m| m.id.as_str()).collect();
    if changed {
        info!(members = ?ids, version = list.version, agents = told, "Member list changed; sent to the agents");
    } else {
        debug!(
            version = list.version,
            agents = told,
            "Member list re-signed"
        );
    }
    published.members = list.members;
    published.at = Some(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, addrs: &[&str]) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            laptop_addrs: vec![],
            agent_addrs: addrs.iter().map(|a| a.to_string()).collect(),
            started_at: 0,
            heartbeat_at: 0,
            db_at: 0,
            expires_at: 10,
            sessions: 0,
            agents: 0,
            feed_seq: 0,
            left_at: None,
        }
    }

    #[test]
    fn agents_dial_the_first_address_on_tcp_and_the_second_on_quic() {
        let m = listed(&member("gw1", &["127.0.0.1:9001", "127.0.0.1:9002"])).unwrap();
        assert_eq!(
            (m.tcp.as_str(), m.quic.as_str(), m.server_name.as_str()),
            ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1")
        );
        let m = listed(&member("gw2", &["gw2.example.lg.jp:8443"])).unwrap();
        assert_eq!(m.quic, "gw2.example.lg.jp:8443");
        assert_eq!(m.server_name, "gw2.example.lg.jp");
        let m = listed(&member("gw3", &["[2001:db8::1]:8443"])).unwrap();
        assert_eq!(m.server_name, "2001:db8::1");
        // Nothing to dial: no address, or a wildcard one.
        assert!(listed(&member("gw4", &[])).is_none());
        assert!(listed(&member("gw5", &["0.0.0.0:8443"])).is_none());
        assert!(listed(&member("gw6", &["[::]:8443"])).is_none());
    }
}
