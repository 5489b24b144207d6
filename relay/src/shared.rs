//! The relay's state shared by every connection task ([`Shared`]): the
//! agent registry, live sessions, pending data channels, the session cap,
//! the CRL verifier, metrics, the store and the policy; and the small
//! helpers every part uses (refusing, auditing, metric labels).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kakehashi_proto::io::write_message;
use kakehashi_proto::reason::ReasonText;
use kakehashi_proto::{Reason, Refusal, TicketSigner};
use kakehashi_transport::serve::Refused;
use kakehashi_transport::tls::{PeerCertFacts, ReloadingClientVerifier};
use kakehashi_transport::tunnel::{DataChannels, SessionOpener};
use kakehashi_transport::{BoxIo, Shutdown, Transport};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::metrics::Metrics;

/// Addresses actually bound (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundAddrs {
    /// Terminal QUIC.
    pub terminal_quic: Option<SocketAddr>,
    /// Terminal TCP.
    pub terminal_tcp: Option<SocketAddr>,
    /// Agent QUIC.
    pub agent_quic: Option<SocketAddr>,
    /// Agent TCP.
    pub agent_tcp: Option<SocketAddr>,
    /// Admin listener (`/metrics`).
    pub admin: Option<SocketAddr>,
    /// Web portal (enrollment, login, my devices).
    pub portal: Option<SocketAddr>,
}

pub(crate) struct AgentEntry {
    pub(crate) generation: u64,
    /// The agent's certificate, re-checked when the CRL changes.
    pub(crate) cert: PeerCert,
    /// Opens a session stream on the agent's tunnel.
    pub(crate) opener: SessionOpener,
    pub(crate) transport: Transport,
    /// The agent said in its hello that it enforces session controls (its
    /// RDP filter is on); an agent that did not say does not.
    pub(crate) enforces: bool,
    /// Cancelled when a newer tunnel for the same desk replaces this one.
    pub(crate) replaced: CancellationToken,
    /// Frames for the agent's control stream (the member list, the
    /// `restarting` notice); `None` for an agent that does not take them.
    pub(crate) control: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
}

/// What is kept of a peer's end-entity certificate to re-check it later.
pub(crate) type PeerCert = Arc<PeerCertFacts>;

/// A session in progress, so something outside it (a revocation, later a
/// policy change or an operator) can end it.
pub(crate) struct LiveSession {
    /// Its session id.
    pub(crate) id: String,
    pub(crate) desk: String,
    pub(crate) device: String,
    pub(crate) cert: PeerCert,
    /// Who asked, to re-decide the session when the policy, the device, the
    /// desk, a plan or a BCP declaration changes; `None` on a bare test relay.
    pub(crate) asker: Option<crate::admission::Asker>,
    /// When it started (unix seconds).
    pub(crate) started: i64,
    /// Longest duration the deciding rule allows, from `started`.
    pub(crate) max_duration: Option<u64>,
    /// Unix time at which it must be re-decided (its current end); 0: none.
    pub(crate) end_at: std::sync::atomic::AtomicI64,
    pub(crate) end: CancellationToken,
    pub(crate) reason: Mutex<Option<Refusal>>,
    /// What the ops dashboard shows of it (the metrics labels and the user).
    pub(crate) labels: SessionLabels,
    /// The desk's agent enforces controls: a re-decision that makes the desk
    /// an RDP desk with restricting controls ends the session otherwise.
    pub(crate) agent_enforces: bool,
    /// Bytes relayed so far (laptop → desk, desk → laptop), saved to the
    /// store with each heartbeat.
    pub(crate) counters: kakehashi_transport::splice::Counters,
}

/// A live session's user and metrics labels, for the ops dashboard.
pub(crate) struct SessionLabels {
    pub(crate) user: Option<String>,
    pub(crate) class: String,
    pub(crate) level: String,
    pub(crate) dept: String,
    pub(crate) transport: Transport,
}

/// A live session as the ops dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSessionView {
    /// Session id.
    pub id: String,
    /// Desk id.
    pub desk: String,
    /// Device id.
    pub device: String,
    /// User id (`None` on a bare test relay without logins).
    pub user: Option<String>,
    /// Terminal class.
    pub class: String,
    /// Confidentiality level (as the metrics label).
    pub level: String,
    /// Department (as the metrics label).
    pub dept: String,
    /// `quic` or `tcp`.
    pub transport: &'static str,
    /// Unix seconds.
    pub started: i64,
}

/// A bounded page of live sessions, see [`Shared::live_session_page`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LiveSessionPage {
    /// Live sessions in all.
    pub total: usize,
    /// Live sessions matching the filter.
    pub matched: usize,
    /// The newest matching sessions, newest first.
    pub sessions: Vec<LiveSessionView>,
}

impl LiveSession {
    pub(crate) fn view(&self, id: &str) -> LiveSessionView {
        let l = &self.labels;
        LiveSessionView {
            id: id.to_string(),
            desk: self.desk.clone(),
            device: self.device.clone(),
            user: l.user.clone(),
            class: l.class.clone(),
            level: l.level.clone(),
            dept: l.dept.clone(),
            transport: l.transport.as_str(),
            started: self.started,
        }
    }

    /// Whether the desk, device or user contains `needle` (ASCII case folded).
    pub(crate) fn matches(&self, needle: &str) -> bool {
        needle.is_empty()
            || [
                self.desk.as_str(),
                self.device.as_str(),
                self.labels.user.as_deref().unwrap_or(""),
            ]
            .iter()
            .any(|h| contains_ignore_ascii_case(h, needle))
    }
}

/// Whether `needle` occurs in `hay`, ASCII letters compared without case
/// (the dashboard's session filter).
pub fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.len() <= h.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

impl LiveSession {
    pub(crate) fn end(&self, reason: Reason) {
        self.end_with(Refusal::new(reason));
    }

    pub(crate) fn end_with(&self, refusal: Refusal) {
        self.reason
            .lock()
            .expect("reason lock")
            .get_or_insert(refusal);
        self.end.cancel();
    }
}

/// Why recently ended sessions were ended by the gateway, so a laptop can
/// ask (`SessionEndQuery`) and tell its user. Bounded: the oldest go first.
#[derive(Default)]
pub(crate) struct EndedSessions {
    pub(crate) order: std::collections::VecDeque<String>,
    pub(crate) by_id: HashMap<String, (String, Refusal)>,
}

impl EndedSessions {
    const CAP: usize = 8192;

    pub(crate) fn insert(&mut self, session: String, device: String, r: Refusal) {
        if self.by_id.insert(session.clone(), (device, r)).is_none() {
            self.order.push_back(session);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

/// State shared by every task of a gateway.
pub struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) signer: TicketSigner,
    pub(crate) agents: Mutex<HashMap<String, AgentEntry>>,
    /// TCP data connections asked of agents, waiting for them.
    pub(crate) channels: DataChannels,
    pub(crate) sessions: Arc<Semaphore>,
    /// The budget of bytes in flight; each session holds its share.
    pub(crate) budget: crate::budget::Budget,
    /// The gateway's CPU use and scheduling delay; new sessions are
    /// refused while either is over its limit.
    pub(crate) load: Arc<crate::load::Load>,
    pub(crate) live: Mutex<HashMap<String, Arc<LiveSession>>>,
    pub(crate) generation: AtomicU64,
    /// This gateway's cluster membership generation (0 without a store).
    pub(crate) member_generation: i64,
    /// The last audit sequence the change feed has applied.
    pub(crate) feed_seq: std::sync::atomic::AtomicI64,
    /// The cluster's member list as last signed (a whole `MemberList`
    /// frame), sent to each agent that takes it when its tunnel opens.
    pub(crate) member_list: Mutex<Option<Arc<Vec<u8>>>>,
    pub(crate) verifier: Arc<ReloadingClientVerifier>,
    /// The gateway's own certificate, reloaded when its files change.
    pub(crate) server_cert: Arc<kakehashi_transport::server_cert::ReloadingCert>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The database, when `[store]` is configured.
    pub store: Option<kakehashi_store::Store>,
    /// The access policy in force; `None` on a bare test relay.
    pub policy: Option<crate::admission::PolicyHolder>,
    pub(crate) ended: Mutex<EndedSessions>,
    /// Session ends the store could not take yet (recorded by the
    /// heartbeat once the database answers).
    pub(crate) unrecorded_ends: crate::ends::UnrecordedEnds,
    /// The one shutdown of the process: listeners drain on it, sessions
    /// are its work, and whatever the gateway adds (the portal, the
    /// metrics listener) is spawned on it.
    pub(crate) shutdown: Shutdown,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Desks with a live tunnel.
    pub fn online_desks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .agents
            .lock()
            .expect("agents lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The relay's settings.
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// The process's shutdown: drain, then force after the grace period.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Live sessions as (session id, desk, device).
    pub fn live_sessions(&self) -> Vec<(String, String, String)> {
        let live = self.live.lock().expect("live lock");
        let mut v: Vec<_> = live
            .iter()
            .map(|(id, l)| (id.clone(), l.desk.clone(), l.device.clone()))
            .collect();
        v.sort();
        v
    }

    /// End a live session with a reason. Returns whether it was live.
    pub fn end_session(&self, id: &str, reason: Reason) -> bool {
        let l = self.live.lock().expect("live lock").get(id).cloned();
        l.map(|l| l.end(reason)).is_some()
    }

    /// Live sessions whose desk, device or user contains `filter` (ASCII
    /// case-insensitive; empty: all): how many, and the newest `limit` of
    /// them, newest first. Only those `limit` are copied, so a dashboard
    /// stays cheap with tens of thousands of live sessions.
    pub fn live_session_page(&self, filter: &str, limit: usize) -> LiveSessionPage {
        let live = self.live.lock().expect("live lock");
        let mut hits: Vec<(&String, &Arc<LiveSession>)> =
            live.iter().filter(|(_, l)| l.matches(filter)).collect();
        let matched = hits.len();
        let newest_first = |a: &(&String, &Arc<LiveSession>), b: &(&String, &Arc<LiveSession>)| {
            b.1.started.cmp(&a.1.started).then_with(|| a.0.cmp(b.0))
        };
        if hits.len() > limit && limit > 0 {
            hits.select_nth_unstable_by(limit - 1, newest_first);
        }
        hits.truncate(limit);
        hits.sort_unstable_by(newest_first);
        LiveSessionPage {
            total: live.len(),
            matched,
            sessions: hits.into_iter().map(|(id, l)| l.view(id)).collect(),
        }
    }

    /// One live session, if it is live.
    pub fn live_session(&self, id: &str) -> Option<LiveSessionView> {
        self.live
            .lock()
            .expect("live lock")
            .get(id)
            .map(|l| l.view(id))
    }

    /// The configured maximum of concurrent sessions.
    pub fn max_sessions(&self) -> usize {
        self.cfg.max_sessions
    }

    /// The version of the policy in force (`None` on a bare test relay).
    pub fn policy_version(&self) -> Option<i64> {
        self.policy.as_ref().map(|p| p.get().version)
    }

    /// The budget of bytes in flight and the part live sessions hold, in bytes.
    pub fn memory_budget(&self) -> (u64, u64) {
        (self.budget.total(), self.budget.reserved())
    }

    /// Sessions in progress.
    pub fn active_sessions(&self) -> usize {
        self.cfg.max_sessions - self.sessions.available_permits()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Terminal,
    Agent,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Terminal => "terminal",
            Role::Agent => "agent",
        }
    }
}

impl Shared {
    /// The per-source cap on handshakes in progress for a listener role.
    pub(crate) fn handshake_limits(&self, role: Role) -> kakehashi_transport::limit::SourceLimits {
        let per_source = match role {
            Role::Terminal => self.cfg.terminal_handshakes_per_source,
            Role::Agent => self.cfg.agent_handshakes_per_source,
        };
        // Exported at 0 from the start, so panels and alerts work at once.
        for kind in ["per_source", "quic_retry", "busy"] {
            self.metrics
                .handshakes_limited
                .with_label_values(&[role.as_str(), kind]);
        }
        // The total is the listener's connection cap, taken separately.
        kakehashi_transport::limit::SourceLimits::new(usize::MAX, per_source)
    }

    /// Counts a failed handshake or refused peer certificate by its reason.
    pub(crate) fn auth_failure(&self, label: &str) {
        self.metrics.auth_failures.with_label_values(&[label]).inc();
    }

    /// A connection turned away by a cap of its listener.
    pub(crate) fn connection_refused(&self, role: Role, peer: std::net::SocketAddr, why: Refused) {
        match why {
            Refused::Connections(_) => {
                warn!(role = role.as_str(), %peer, "Connection cap reached; refusing")
            }
            Refused::Handshakes(_) => self.handshake_limited(role, "per_source", peer),
            Refused::Busy => self.handshake_limited(role, "busy", peer),
        }
    }

    /// Counts a connection turned away (or sent a Retry) before its
    /// handshake; logs the per-source refusals at debug level only, as a
    /// flood would otherwise fill the log (the counter shows it).
    pub(crate) fn handshake_limited(&self, role: Role, kind: &str, peer: std::net::SocketAddr) {
        self.metrics
            .handshakes_limited
            .with_label_values(&[role.as_str(), kind])
            .inc();
        debug!(role = role.as_str(), %peer, kind, "Connection limited before its handshake");
    }
}

/// Send a refusal and close. Boxed: it is awaited in many places of
/// long-lived futures, which would otherwise each keep room for it for the
/// whole life of a session.
pub(crate) fn refuse(
    io: &mut BoxIo,
    r: Refusal,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = write_message(io, &r).await;
            let _ = io.shutdown().await;
        })
        .await;
    })
}

/// Confidentiality level and department labels of a desk, for metrics
/// (bounded: three levels, the municipality's departments). A bare test
/// relay knows neither: "unknown".
pub(crate) fn desk_labels(d: Option<&crate::admission::DeskFacts>) -> (String, String) {
    match d {
        Some(d) => (d.level.to_string(), d.department.clone()),
        None => ("unknown".into(), "unknown".into()),
    }
}

/// A bounded metrics label for a refusal or end reason code (from the
/// gateway, the policy or an agent); anything else is "other".
pub(crate) fn reason_label(code: &str) -> &'static str {
    fn known<R: ReasonText>(code: &str) -> Option<&'static str> {
        R::parse(code).map(R::code)
    }
    match code {
        "closed" => "closed",
        "peer_error" => "peer_error",
        c => known::<Reason>(c)
            .or_else(|| known::<kakehashi_policy::ReasonCode>(c))
            .unwrap_or("other"),
    }
}

pub(crate) fn update_capacity(s: &Shared) {
    let max = s.cfg.max_sessions.max(1) as f64;
    s.metrics
        .capacity_used
        .set(s.active_sessions() as f64 / max);
}

/// Append a pure event to the audit log (when there is a store).
pub(crate) async fn audit_event(
    s: &Shared,
    actor: &str,
    action: &str,
    subject: &str,
    reason: &str,
    detail: serde_json::Value,
) {
    if let Some(store) = &s.store {
        let a = kakehashi_store::Audit::new(kakehashi_store::unix_now(), actor, action)
            .subject(subject)
            .reason(reason)
            .detail(detail);
        if let Err(e) = store.append_audit(a).await {
            warn!(error = %e, "Cannot write the audit record");
        }
    }
}

/// The laptop at the other end of a session request.
pub(crate) struct Who {
    pub(crate) device: String,
    pub(crate) class: kakehashi_pki::TerminalClass,
    /// The user named in the device certificate (a personal laptop).
    pub(crate) user: Option<String>,
    pub(crate) cert: PeerCert,
    pub(crate) transport: Transport,
    /// The laptop's address (see `sessions::handle_terminal_stream`).
    pub(crate) source: std::net::SocketAddr,
}

impl Who {
    /// The audit log's actor: the user when known, else the laptop.
    pub(crate) fn actor(&self, user: Option<&str>) -> String {
        user.map_or_else(
            || format!("device:{}", self.device),
            |u| format!("user:{u}"),
        )
    }
}

/// The longest a session's setup waits on the store for one phase: past
/// it the database counts as unreachable (a half-open connection, a
/// PostgreSQL failover) and the session is refused with
/// `store_unavailable`, fail closed, instead of hanging.
pub(crate) const STORE_DEADLINE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_reason_is_its_own_label_and_anything_else_is_other() {
        for &r in <Reason as ReasonText>::ALL {
            assert_eq!(reason_label(r.code()), r.code());
        }
        for &r in <kakehashi_policy::ReasonCode as ReasonText>::ALL {
            assert_eq!(reason_label(r.code()), r.code());
        }
        assert_eq!(reason_label("closed"), "closed");
        assert_eq!(reason_label("peer_error"), "peer_error");
        assert_eq!(reason_label("made_up_by_a_modified_agent"), "other");
    }
}
