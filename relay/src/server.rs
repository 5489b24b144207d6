//! The relay: listeners for laptops and agents, the agent registry, session
//! setup with signed tickets, and the splice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kakehashi_pki::Identity;
use kakehashi_proto::io::{read_frame, write_message, write_raw, FrameIoError};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, FilterReport, Message, OpenDataChannel,
    SessionAccepted, SessionRequest,
};
use kakehashi_proto::ticket::{TicketClaims, TICKET_LIFETIME_SECS, TICKET_VERSION};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal, TicketSigner, ALPN_AGENT, ALPN_TERMINAL};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::splice::{splice_counted, Counters};
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::tls::{self, PeerCertFacts, ReloadingClientVerifier, TlsFiles};
use kakehashi_transport::tls_stream;
use kakehashi_transport::{random_hex, tune_tcp, unix_now, BoxIo, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

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

/// How to reach one desk's agent.
#[derive(Clone)]
enum AgentLink {
    Quic(quinn::Connection),
    Tcp { control: mpsc::Sender<Vec<u8>> },
}

struct AgentEntry {
    generation: u64,
    /// The agent's certificate, re-checked when the CRL changes.
    cert: PeerCert,
    link: AgentLink,
    transport: Transport,
    /// The agent said in its hello that it enforces session controls (its
    /// RDP filter is on); an agent that did not say does not.
    enforces: bool,
    /// Cancelled when a newer tunnel for the same desk replaces this one.
    replaced: CancellationToken,
}

/// What is kept of a peer's end-entity certificate to re-check it later.
type PeerCert = Arc<PeerCertFacts>;

/// A session in progress, so something outside it (a revocation, later a
/// policy change or an operator) can end it.
struct LiveSession {
    desk: String,
    device: String,
    cert: PeerCert,
    /// Who asked, to re-decide the session when the policy, the device, the
    /// desk, a plan or a BCP declaration changes; `None` on a bare test relay.
    asker: Option<crate::admission::Asker>,
    /// When it started (unix seconds).
    started: i64,
    /// Longest duration the deciding rule allows, from `started`.
    max_duration: Option<u64>,
    /// Unix time at which it must be re-decided (its current end); 0: none.
    end_at: std::sync::atomic::AtomicI64,
    end: CancellationToken,
    reason: Mutex<Option<Refusal>>,
    /// What the ops dashboard shows of it (the metrics labels and the user).
    labels: SessionLabels,
    /// The desk's agent enforces controls: a re-decision that makes the desk
    /// an RDP desk with restricting controls ends the session otherwise.
    agent_enforces: bool,
}

/// A live session's user and metrics labels, for the ops dashboard.
struct SessionLabels {
    user: Option<String>,
    class: String,
    level: String,
    dept: String,
    transport: Transport,
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
    fn view(&self, id: &str) -> LiveSessionView {
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
    fn matches(&self, needle: &str) -> bool {
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

fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.len() <= h.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

impl LiveSession {
    fn end(&self, reason: Reason) {
        self.end_with(Refusal::new(reason));
    }

    fn end_with(&self, refusal: Refusal) {
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
struct EndedSessions {
    order: std::collections::VecDeque<String>,
    by_id: HashMap<String, (String, Refusal)>,
}

impl EndedSessions {
    const CAP: usize = 8192;

    fn insert(&mut self, session: String, device: String, r: Refusal) {
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

/// Removes a session from the live table however it ends.
struct LiveGuard<'a> {
    s: &'a Shared,
    id: String,
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.s.live.lock().expect("live lock").remove(&self.id);
    }
}

/// A data connection an agent was asked to dial, waiting for it.
struct PendingChannel {
    desk: String,
    deliver: oneshot::Sender<BoxIo>,
}

/// State shared by every task of a gateway.
pub struct Shared {
    cfg: Arc<Config>,
    signer: TicketSigner,
    agents: Mutex<HashMap<String, AgentEntry>>,
    pending: Mutex<HashMap<String, PendingChannel>>,
    sessions: Arc<Semaphore>,
    live: Mutex<HashMap<String, Arc<LiveSession>>>,
    generation: AtomicU64,
    verifier: Arc<ReloadingClientVerifier>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The database, when `[store]` is configured.
    pub store: Option<kakehashi_store::Store>,
    /// The access policy in force; `None` on a bare test relay.
    pub policy: Option<crate::admission::PolicyHolder>,
    ended: Mutex<EndedSessions>,
    /// Login tokens (their SHA-256) already spent as a step-up, with the
    /// login time, so one fresh login opens one level-3 session.
    step_ups: Mutex<HashMap<[u8; 32], i64>>,
    shutdown: CancellationToken,
    force: CancellationToken,
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

    /// Cancelled when the relay starts shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
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

    /// Sessions in progress.
    pub fn active_sessions(&self) -> usize {
        self.cfg.max_sessions - self.sessions.available_permits()
    }
}

/// The relay with its listeners bound, ready to serve.
pub struct Relay {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    terminal_quic: Option<quinn::Endpoint>,
    terminal_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    agent_quic: Option<quinn::Endpoint>,
    agent_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Load certificates and keys and bind the laptop and agent listeners,
    /// on `store` (none: a bare relay for tests, or every session refused).
    /// Errors here (bad files, ports in use) happen before anything serves.
    pub async fn bind(cfg: Config, store: Option<kakehashi_store::Store>) -> anyhow::Result<Self> {
        let cfg = Arc::new(cfg);
        if cfg.relay_without_policy {
            warn!(controls = ?cfg.testing_controls, non_rdp_desks = cfg.testing_non_rdp_desks, "[testing] relay_without_policy: no policy; any valid device certificate reaches any online desk (tests only)");
        }
        if let Some(minute) = cfg.testing_minute_secs {
            warn!(minute_secs = minute, "[testing] policy_minute_secs: session time limits and idle timeouts run {minute} seconds per minute (tests only)");
        }
        let files = TlsFiles {
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            crl: cfg.crl.clone(),
        };
        tls::check_key_file(&cfg.key)?;
        tls::check_key_file(&cfg.ticket_key)?;
        let m = files.load()?;
        let verifier = ReloadingClientVerifier::with_grace(&m.ca, cfg.crl.clone(), cfg.crl_grace)?;
        let key = kakehashi_pki::load_ticket_signing_key(&cfg.ticket_key).with_context(|| {
            format!(
                "cannot load ticket signing key {}",
                cfg.ticket_key.display()
            )
        })?;
        let metrics = Metrics::new();
        let tickets = resumption_tickets(&cfg, &metrics)?;
        let term_tls =
            tls::server_config_with_tickets(&m, verifier.clone(), ALPN_TERMINAL, tickets.clone())?;
        let mut agent_tls =
            tls::server_config_with_tickets(&m, verifier.clone(), ALPN_AGENT, tickets)?;
        // An agent spends one ticket on every attempt, including those that
        // find no gateway (a QUIC ClientHello leaves at once), and keeps up to
        // 8; four per connection still leave it one after a restart of a few
        // seconds.
        agent_tls.send_tls13_tickets = 4;
        let quic_limits = |max_streams| QuicLimits {
            max_streams,
            keepalive: cfg.keepalive,
            idle_timeout: cfg.idle_timeout,
            ..QuicLimits::default()
        };
        let mut addrs = BoundAddrs::default();
        let terminal_tcp = match cfg.terminal_tcp {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot bind terminal TCP {a}"))?;
                addrs.terminal_tcp = Some(l.local_addr()?);
                Some((l, Arc::new(term_tls.clone())))
            }
            None => None,
        };
        let terminal_quic = match cfg.terminal_quic {
            Some(a) => {
                // A laptop opens one stream per session (and a probe); quinn holds
                // state for each allowed stream, so allow what a laptop needs.
                let ep = kakehashi_transport::quic::server(
                    a,
                    term_tls,
                    quic_limits(cfg.terminal_quic_streams),
                )?;
                addrs.terminal_quic = Some(ep.local_addr()?);
                Some(ep)
            }
            None => None,
        };
        let agent_tcp = match cfg.agent_tcp {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot bind agent TCP {a}"))?;
                addrs.agent_tcp = Some(l.local_addr()?);
                Some((l, Arc::new(agent_tls.clone())))
            }
            None => None,
        };
        let agent_quic = match cfg.agent_quic {
            Some(a) => {
                // An agent opens only its control stream; sessions are streams the gateway opens.
                let ep = kakehashi_transport::quic::server(a, agent_tls, quic_limits(4))?;
                addrs.agent_quic = Some(ep.local_addr()?);
                Some(ep)
            }
            None => None,
        };
        let policy = match (&store, cfg.relay_without_policy) {
            (Some(store), false) => {
                let loaded =
                    crate::admission::load_initial(store, cfg.policy_file.as_deref()).await?;
                info!(
                    version = loaded.version,
                    rules = loaded.policy.rules.len(),
                    "Access policy in force"
                );
                close_orphaned_sessions(store).await;
                Some(crate::admission::PolicyHolder::new(loaded))
            }
            (None, false) => {
                warn!("No [store]: no users, desks or policy; every session will be refused (policy_unavailable)");
                None
            }
            (_, true) => None,
        };
        metrics.sessions_max.set(cfg.max_sessions as i64);
        for (name, der) in [("gateway", &m.chain[0]), ("ca", &m.ca[0])] {
            if let Some(t) = not_after(der) {
                metrics.cert_expiry.with_label_values(&[name]).set(t as f64);
            }
        }
        let shared = Arc::new(Shared {
            signer: TicketSigner::new(key),
            agents: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            sessions: Arc::new(Semaphore::new(cfg.max_sessions)),
            live: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            verifier: verifier.clone(),
            metrics,
            store,
            policy,
            ended: Mutex::new(EndedSessions::default()),
            step_ups: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
            cfg,
        });
        Ok(Self {
            shared,
            addrs,
            terminal_quic,
            terminal_tcp,
            agent_quic,
            agent_tcp,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// A handle on the shared state (for the portal's dashboard, the demo
    /// and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` is cancelled, then stop accepting, give live
    /// sessions the grace period, and close everything.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let s = self.shared.clone();
        let mut tasks = JoinSet::new();
        let term_cap = Arc::new(Semaphore::new(s.cfg.terminal_max_connections));
        let agent_cap = Arc::new(Semaphore::new(s.cfg.agent_max_connections));
        tasks.spawn(watch_crl(s.clone()));
        if s.policy.is_some() {
            tasks.spawn(watch_changes(s.clone()));
        }
        if let Some((l, acc)) = self.terminal_tcp {
            tasks.spawn(tcp_accept_loop(
                s.clone(),
                l,
                acc,
                term_cap.clone(),
                Role::Terminal,
            ));
        }
        if let Some(ep) = self.terminal_quic.clone() {
            tasks.spawn(quic_accept_loop(
                s.clone(),
                ep,
                term_cap.clone(),
                Role::Terminal,
            ));
        }
        if let Some((l, acc)) = self.agent_tcp {
            tasks.spawn(tcp_accept_loop(
                s.clone(),
                l,
                acc,
                agent_cap.clone(),
                Role::Agent,
            ));
        }
        if let Some(ep) = self.agent_quic.clone() {
            tasks.spawn(quic_accept_loop(
                s.clone(),
                ep,
                agent_cap.clone(),
                Role::Agent,
            ));
        }
        info!(gateway = %s.cfg.name, "Gateway serving");

        shutdown.cancelled().await;
        info!(sessions = s.active_sessions(), grace = ?s.cfg.shutdown_grace, "Shutting down: no new connections");
        s.shutdown.cancel();
        let deadline = Instant::now() + s.cfg.shutdown_grace;
        while s.active_sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if s.active_sessions() > 0 {
            warn!(
                sessions = s.active_sessions(),
                "Grace period over: ending remaining sessions"
            );
        }
        s.force.cancel();
        for ep in [&self.terminal_quic, &self.agent_quic]
            .into_iter()
            .flatten()
        {
            ep.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        for ep in [&self.terminal_quic, &self.agent_quic]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
        debug!("Relay stopped");
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Terminal,
    Agent,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Terminal => "terminal",
            Role::Agent => "agent",
        }
    }
}

impl Shared {
    /// The per-source cap on handshakes in progress for a listener role.
    fn handshake_limits(&self, role: Role) -> kakehashi_transport::limit::SourceLimits {
        let per_source = match role {
            Role::Terminal => self.cfg.terminal_handshakes_per_source,
            Role::Agent => self.cfg.agent_handshakes_per_source,
        };
        // Exported at 0 from the start, so panels and alerts work at once.
        for kind in ["per_source", "quic_retry"] {
            self.metrics
                .handshakes_limited
                .with_label_values(&[role.as_str(), kind]);
        }
        // The total is the listener's connection cap, taken separately.
        kakehashi_transport::limit::SourceLimits::new(usize::MAX, per_source)
    }

    /// Counts a connection turned away (or sent a Retry) before its
    /// handshake; logs the per-source refusals at debug level only, as a
    /// flood would otherwise fill the log (the counter shows it).
    fn handshake_limited(&self, role: Role, kind: &str, peer: std::net::SocketAddr) {
        self.metrics
            .handshakes_limited
            .with_label_values(&[role.as_str(), kind])
            .inc();
        debug!(role = role.as_str(), %peer, kind, "Connection limited before its handshake");
    }
}

async fn tcp_accept_loop(
    s: Arc<Shared>,
    l: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    cap: Arc<Semaphore>,
    role: Role,
) {
    let mut conns = JoinSet::new();
    let handshaking = s.handshake_limits(role);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = s.shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(role = role.as_str(), error = %e, "Accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            warn!(role = role.as_str(), %peer, "Connection cap reached; refusing");
            drop(tcp);
            continue;
        };
        let Ok(handshake_slot) = handshaking.try_acquire(peer.ip()) else {
            s.handshake_limited(role, "per_source", peer);
            drop(tcp);
            continue;
        };
        tune_tcp(&tcp, s.cfg.keepalive);
        let s = s.clone();
        let tls_config = tls_config.clone();
        let span = info_span!("conn", role = role.as_str(), transport = "tcp", %peer);
        conns.spawn(
            async move {
                let _permit = permit;
                // Boxed, as are the handlers below: a task's future is
                // allocated at the size of its largest state for the whole
                // life of the connection, and the handshake's state is not
                // needed after it.
                let handshake = Box::pin(tcp_handshake(&s, tls_config, tcp)).await;
                drop(handshake_slot);
                let Some((mut io, ident)) = handshake else {
                    return;
                };
                match (role, ident) {
                    (_, Err(reason)) => {
                        warn!(
                            reason = reason.code(),
                            "Peer certificate refused after the handshake"
                        );
                        s.metrics
                            .auth_failures
                            .with_label_values(&[reason.code()])
                            .inc();
                        refuse(&mut io, Refusal::new(reason)).await;
                    }
                    (Role::Terminal, Ok((id @ Identity::Device { .. }, cert))) => {
                        Box::pin(handle_terminal_stream(s, io, id, cert, Transport::Tcp)).await;
                    }
                    (Role::Agent, Ok((Identity::Agent { desk }, cert))) => {
                        Box::pin(handle_agent_tcp(s, io, desk, cert)).await
                    }
                    (_, Ok((other, _))) => {
                        warn!(identity = ?other, "Certificate of the wrong kind for this listener");
                        refuse(&mut io, Refusal::new(Reason::WrongCertificateKind)).await;
                    }
                }
            }
            .instrument(span),
        );
    }
    drain(conns, &s).await;
}

/// The TLS handshake of a TCP connection, and who the peer is. `None` when
/// the handshake failed (logged and counted here).
async fn tcp_handshake(
    s: &Shared,
    tls_config: Arc<rustls::ServerConfig>,
    tcp: tokio::net::TcpStream,
) -> Option<(BoxIo, Result<(Identity, PeerCert), Reason>)> {
    // Holds no buffer while the connection is idle (tls_stream).
    let accept = tls_stream::accept(tls_config, tcp);
    let tls = match tokio::time::timeout(s.cfg.handshake_timeout, accept).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!(error = %e, "TLS handshake refused");
            s.metrics
                .auth_failures
                .with_label_values(&[handshake_failure(&e)])
                .inc();
            return None;
        }
        Err(_) => {
            warn!("TLS handshake timed out");
            s.metrics
                .auth_failures
                .with_label_values(&["handshake_timeout"])
                .inc();
            return None;
        }
    };
    let ident = peer_identity(s, tls.peer_cert().map(|c| c.as_ref()));
    Some((Box::new(tls), ident))
}

async fn quic_accept_loop(s: Arc<Shared>, ep: quinn::Endpoint, cap: Arc<Semaphore>, role: Role) {
    let mut conns = JoinSet::new();
    let handshaking = s.handshake_limits(role);
    let retry_above = match role {
        Role::Terminal => s.cfg.terminal_quic_retry_above,
        Role::Agent => s.cfg.agent_quic_retry_above,
    };
    loop {
        let incoming = tokio::select! {
            biased;
            _ = s.shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            i = ep.accept() => match i { Some(i) => i, None => break },
        };
        let peer = incoming.remote_address();
        // Under load, a peer must show it receives at its address before
        // any crypto work (and before it counts against an address, which
        // an unvalidated packet could forge).
        if !incoming.remote_address_validated()
            && handshaking.open() >= retry_above
            && incoming.may_retry()
        {
            s.handshake_limited(role, "quic_retry", peer);
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            warn!(role = role.as_str(), %peer, "Connection cap reached; refusing");
            incoming.refuse();
            continue;
        };
        let Ok(handshake_slot) = handshaking.try_acquire(peer.ip()) else {
            s.handshake_limited(role, "per_source", peer);
            incoming.refuse();
            continue;
        };
        let s = s.clone();
        let span = info_span!("conn", role = role.as_str(), transport = "quic", %peer);
        conns.spawn(
            async move {
                let _permit = permit;
                let conn = match incoming.accept() {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "QUIC accept failed");
                        return;
                    }
                };
                let conn = tokio::time::timeout(s.cfg.handshake_timeout, conn).await;
                drop(handshake_slot);
                let conn = match conn {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        warn!(error = %e, "QUIC handshake refused");
                        s.metrics
                            .auth_failures
                            .with_label_values(&[quic_handshake_failure(&e)])
                            .inc();
                        return;
                    }
                    Err(_) => {
                        warn!("QUIC handshake timed out");
                        s.metrics
                            .auth_failures
                            .with_label_values(&["handshake_timeout"])
                            .inc();
                        return;
                    }
                };
                match (
                    role,
                    peer_identity(&s, tls::quic_peer_cert(&conn).as_deref()),
                ) {
                    (_, Err(reason)) => {
                        warn!(
                            reason = reason.code(),
                            "Peer certificate refused after the handshake"
                        );
                        s.metrics
                            .auth_failures
                            .with_label_values(&[reason.code()])
                            .inc();
                        conn.close(quinn::VarInt::from_u32(1), reason.code().as_bytes());
                    }
                    (Role::Terminal, Ok((id @ Identity::Device { .. }, cert))) => {
                        serve_terminal_quic(s, conn, id, cert).await
                    }
                    (Role::Agent, Ok((Identity::Agent { desk }, cert))) => {
                        handle_agent_quic(s, conn, desk, cert).await
                    }
                    (_, Ok((other, _))) => {
                        warn!(identity = ?other, "Certificate of the wrong kind for this listener");
                        conn.close(
                            quinn::VarInt::from_u32(1),
                            Reason::WrongCertificateKind.code().as_bytes(),
                        );
                    }
                }
            }
            .instrument(span),
        );
    }
    drain(conns, &s).await;
}

/// TLS session-ticket keys from `[tls] resumption_keys`, so agents and
/// laptops resume after a restart. A key file that exists but is unusable
/// (readable by others, not a key file) stops the start; one that cannot be
/// created at the default place only costs resumption across restarts.
fn resumption_tickets(
    cfg: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn rustls::server::ProducesTickets>> {
    use kakehashi_transport::resumption::PersistentTicketer;
    let (path, explicit) = &cfg.resumption_keys;
    let t = match PersistentTicketer::open(path) {
        Ok(t) => t,
        Err(e) if !explicit && !path.exists() => {
            warn!(path = %path.display(), error = %format!("{e:#}"), "Cannot keep TLS resumption keys on disk; after a restart every peer does a full handshake (set [tls] resumption_keys to a writable file)");
            PersistentTicketer::in_memory()?
        }
        Err(e) => return Err(e.context("[tls] resumption_keys")),
    };
    let counter = metrics.tls_tickets.clone();
    Ok(Arc::new(t.observe(move |opened| {
        counter
            .with_label_values(&[if opened { "resumed" } else { "refused" }])
            .inc()
    })))
}

/// Who the peer is, re-checked against the current CRL and validity dates:
/// a resumed TLS session skipped the handshake's certificate verification.
fn peer_identity(s: &Shared, der: Option<&[u8]>) -> Result<(Identity, PeerCert), Reason> {
    let der = der.ok_or(Reason::CertRejected)?;
    let cert = PeerCertFacts::from_der(der).map_err(|_| Reason::CertRejected)?;
    check_cert(s, &cert)?;
    let id = kakehashi_pki::identity_from_der(der).map_err(|_| Reason::WrongCertificateKind)?;
    Ok((id, Arc::new(cert)))
}

/// Check a certificate against the current CRL and its validity dates.
fn check_cert(s: &Shared, cert: &PeerCertFacts) -> Result<(), Reason> {
    use kakehashi_transport::tls::PeerCertProblem;
    s.verifier
        .check_peer(cert, unix_now())
        .map_err(|p| match p {
            PeerCertProblem::Revoked => Reason::CertRevoked,
            PeerCertProblem::Expired => Reason::CertExpired,
            PeerCertProblem::Unreadable => Reason::CertRejected,
            PeerCertProblem::CrlStale => Reason::CrlStale,
        })
}

/// Export the CRL's dates, and say in the log when it enters its grace
/// period and when it goes stale (once each, and again after a reload).
fn crl_freshness(s: &Shared, warned: &mut u8) {
    let Some(d) = s.verifier.crl_dates() else {
        return;
    };
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    s.metrics.crl_next_update.set(d.next_update.unwrap_or(0));
    s.metrics
        .crl_age
        .set(now.saturating_sub(d.this_update).max(0));
    let level = match d.next_update {
        Some(_) if s.verifier.crl_fresh(unix_now()).is_err() => 2,
        Some(next) if now > next => 1,
        _ => 0,
    };
    if level > *warned {
        let next = d.next_update.unwrap_or(0);
        let grace_h = s.cfg.crl_grace.as_secs() / 3600;
        if level == 2 {
            error!(next_update = next, grace_hours = grace_h, reason = Reason::CrlStale.code(), "The CRL is past nextUpdate and its grace period: every laptop and agent is refused until the CA's current CRL (kakehashi-pki crl) is installed");
        } else {
            warn!(next_update = next, grace_hours = grace_h, "The CRL is past nextUpdate: install the CA's current CRL (kakehashi-pki crl) before the grace period ends");
        }
    }
    *warned = level;
}

/// Reload the CRL when its file changes, then end the sessions and drop the
/// tunnels of agents whose certificates it now revokes; the same when the
/// CRL goes stale (past `nextUpdate` and the grace: everyone). Laptops are
/// re-checked on every session request.
async fn watch_crl(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = 0;
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let was = warned;
        crl_freshness(&s, &mut warned);
        if warned == 2 && was < 2 {
            recheck_peers(&s);
        }
        match s.verifier.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                info!("CRL reloaded");
                warned = 0;
                crl_freshness(&s, &mut warned);
                recheck_peers(&s);
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "CRL reload failed; keeping the previous CRL")
            }
        }
    }
}

/// End the live sessions and drop the agent tunnels whose certificates the
/// CRL in force no longer accepts.
fn recheck_peers(s: &Shared) {
    let live: Vec<Arc<LiveSession>> = s
        .live
        .lock()
        .expect("live lock")
        .values()
        .cloned()
        .collect();
    for l in live {
        if let Err(reason) = check_cert(s, &l.cert) {
            warn!(device = %l.device, desk = %l.desk, reason = reason.code(), "Ending the session of a revoked certificate");
            l.end(reason);
        }
    }
    let mut agents = s.agents.lock().expect("agents lock");
    agents.retain(|desk, e| match check_cert(s, &e.cert) {
        Ok(()) => true,
        Err(reason) => {
            warn!(
                desk,
                reason = reason.code(),
                "Dropping the tunnel of a revoked agent"
            );
            s.metrics
                .agents_online
                .with_label_values(&[e.transport.as_str()])
                .dec();
            e.replaced.cancel();
            false
        }
    });
}

/// Wait for connection tasks after the listener stops; the force token ends them.
async fn drain(mut conns: JoinSet<()>, s: &Shared) {
    tokio::select! {
        _ = async { while conns.join_next().await.is_some() {} } => {}
        _ = s.force.cancelled() => conns.abort_all(),
    }
}

/// Send a refusal and close. Boxed: it is awaited in many places of
/// long-lived futures, which would otherwise each keep room for it for the
/// whole life of a session.
fn refuse(
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

async fn serve_terminal_quic(
    s: Arc<Shared>,
    conn: quinn::Connection,
    id: Identity,
    cert: PeerCert,
) {
    debug!(device = id.id(), "Terminal connected");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = s.force.cancelled() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            st = conn.accept_bi() => match st {
                Ok(bi) => {
                    streams.spawn(handle_terminal_stream(s.clone(), Box::new(QuicStream::new(bi)), id.clone(), cert.clone(), Transport::Quic).in_current_span());
                }
                Err(e) => {
                    debug!(reason = %e, "Terminal connection closed");
                    break;
                }
            },
        }
    }
    // Let open sessions finish on their own until the force token.
    tokio::select! {
        _ = async { while streams.join_next().await.is_some() {} } => {}
        _ = s.force.cancelled() => streams.abort_all(),
    }
    conn.close(quinn::VarInt::from_u32(0), b"");
}

/// One terminal stream: ping probes, then a session request.
async fn handle_terminal_stream(
    s: Arc<Shared>,
    mut io: BoxIo,
    id: Identity,
    cert: PeerCert,
    transport: Transport,
) {
    let Identity::Device {
        id: device,
        class,
        user,
    } = id
    else {
        return;
    };
    let req = loop {
        let f = match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(&mut io)).await {
            Err(_) => return refuse(&mut io, Refusal::new(Reason::Timeout)).await,
            Ok(Err(FrameIoError::Closed)) => return,
            Ok(Err(e)) => {
                warn!(%device, error = %e, "Bad frame from terminal");
                return refuse(
                    &mut io,
                    Refusal::new(Reason::ProtocolError).with_detail(e.to_string()),
                )
                .await;
            }
            Ok(Ok(f)) => f,
        };
        match f.kind {
            FrameKind::Ping => {
                let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
                if write_raw(&mut io, &pong).await.is_err() {
                    return;
                }
            }
            FrameKind::RedeemLogin | FrameKind::Logout => {
                // As for sessions: the CRL may have changed since this
                // connection's handshake (a long-lived QUIC connection, a
                // resumed TLS session); a revoked laptop gets no token.
                if let Err(reason) = check_cert(&s, &cert) {
                    warn!(%device, reason = reason.code(), "Login refused: certificate no longer valid");
                    s.metrics
                        .auth_failures
                        .with_label_values(&[reason.code()])
                        .inc();
                    return refuse(&mut io, Refusal::new(reason)).await;
                }
                return Box::pin(login_frame(&s, io, &f, &laptop(&device, class, &cert))).await;
            }
            FrameKind::SessionEndQuery => {
                return Box::pin(answer_end_query(&s, io, &f, &device)).await
            }
            _ => match SessionRequest::from_frame(&f) {
                Ok(r) => break r,
                Err(e) => {
                    warn!(%device, error = %e, "Bad session request");
                    return refuse(
                        &mut io,
                        Refusal::new(Reason::ProtocolError).with_detail(e.to_string()),
                    )
                    .await;
                }
            },
        }
    };
    if s.shutdown.is_cancelled() {
        return refuse(&mut io, Refusal::new(Reason::ShuttingDown)).await;
    }
    // The CRL may have changed since this connection's handshake.
    if let Err(reason) = check_cert(&s, &cert) {
        warn!(%device, reason = reason.code(), "Session refused: certificate no longer valid");
        s.metrics.denials.with_label_values(&[reason.code()]).inc();
        return refuse(&mut io, Refusal::new(reason)).await;
    }
    // The person: a valid login token bound to this laptop, when logins are required.
    let this_laptop = laptop(&device, class, &cert);
    let login = match (&s.store, s.cfg.identity.require_login) {
        (Some(store), true) => {
            match Box::pin(crate::login::check(store, &this_laptop, req.token.as_ref())).await {
                Ok(who) => Some(who),
                Err(reason) => {
                    info!(%device, desk = %req.desk, reason = reason.code(), "Session refused: login");
                    s.metrics.denials.with_label_values(&[reason.code()]).inc();
                    Box::pin(audit_event(
                        &s,
                        &format!("device:{device}"),
                        "session.denied",
                        &req.desk,
                        reason.code(),
                        serde_json::json!({ "device": device }),
                    ))
                    .await;
                    return refuse(&mut io, Refusal::new(reason)).await;
                }
            }
        }
        (None, true) => {
            warn!("require_login without a store; refusing");
            return refuse(&mut io, Refusal::new(Reason::Internal)).await;
        }
        (_, false) => None,
    };
    let user = login.as_ref().map(|l| l.user.clone()).or(user);
    let session_id = format!("s-{}", random_hex(12));
    let span = info_span!("session", session = %session_id, desk = %req.desk, %device, class = %class, %transport, user = ?user);
    async move {
        // The policy decides, on the store's current facts.
        let admitted = match Box::pin(admit(&s, &req, &device, class, login.as_ref())).await {
            Ok(mut a) => {
                if let Some(minute) = s.cfg.testing_minute_secs {
                    a.limits = shorter_minutes(a.limits, minute, unix_now());
                }
                a
            }
            Err((refusal, rule)) => {
                info!(reason = %refusal.code, rule = ?rule, "Session refused by the policy");
                s.metrics.denials.with_label_values(&[reason_label(&refusal.code)]).inc();
                Box::pin(audit_event(
                    &s,
                    &user.as_deref().map_or_else(|| format!("device:{device}"), |u| format!("user:{u}")),
                    "session.denied",
                    &req.desk,
                    &refusal.code,
                    serde_json::json!({ "device": device, "class": class.to_string(), "rule": rule, "policy_version": s.policy_version() }),
                ))
                .await;
                return refuse(&mut io, refusal).await;
            }
        };
        let Ok(permit) = s.sessions.clone().try_acquire_owned() else {
            warn!("Session refused: capacity full");
            s.metrics.denials.with_label_values(&[Reason::CapacityFull.code()]).inc();
            return refuse(&mut io, Refusal::new(Reason::CapacityFull)).await;
        };
        let started = Instant::now();
        let started_unix = kakehashi_store::unix_now();
        let controls = admitted.controls;
        let claims = TicketClaims {
            v: TICKET_VERSION,
            session_id: session_id.clone(),
            desk: req.desk.clone(),
            device: device.clone(),
            class: class.to_string(),
            user: user.clone(),
            gateway: s.cfg.name.clone(),
            controls,
            limits: admitted.limits.to_ticket(),
            issued_at: unix_now(),
            expires_at: unix_now() + TICKET_LIFETIME_SECS,
        };
        // Controls that restrict anything need an agent that enforces them,
        // except on a desk an officer registered as a non-RDP service.
        let non_rdp = admitted.desk.as_ref().map_or(s.cfg.testing_non_rdp_desks, |d| {
            d.service == kakehashi_store::DeskService::Other
        });
        let must_enforce = controls.is_restrictive() && !non_rdp;
        let (mut agent, agent_enforces) = match Box::pin(open_to_agent(&s, claims, must_enforce)).await {
            Ok(a) => a,
            Err(r) => {
                info!(reason = %r.code, "Session refused");
                s.metrics.denials.with_label_values(&[reason_label(&r.code)]).inc();
                if r.code == Reason::DeskNotEnforcing.code() {
                    Box::pin(audit_event(
                        &s,
                        &user.as_deref().map_or_else(|| format!("device:{device}"), |u| format!("user:{u}")),
                        "session.denied",
                        &req.desk,
                        &r.code,
                        serde_json::json!({
                            "device": device, "class": class.to_string(), "rule": admitted.rule,
                            "policy_version": s.policy_version(), "controls": controls,
                            "desk_service": "rdp", "agent_enforces": false,
                        }),
                    ))
                    .await;
                }
                return refuse(&mut io, r).await;
            }
        };
        // What is actually enforced, for the audit record.
        let (enforced, enforcement) = if non_rdp {
            (false, NOT_ENFORCED_NON_RDP)
        } else if agent_enforces {
            (true, "enforced by the desk agent's RDP filter")
        } else {
            (false, "nothing to enforce: the controls allow everything")
        };
        // Record the start before the laptop hears of it: a session the
        // store cannot record does not happen.
        if let (Some(store), Some(asker)) = (&s.store, &admitted.asker) {
            let rec = kakehashi_store::SessionStart {
                id: session_id.clone(),
                user_id: asker.user.clone(),
                device_id: device.clone(),
                desk_id: req.desk.clone(),
                class: match class.as_str().parse() {
                    Ok(c) => c,
                    Err(_) => return refuse(&mut io, Refusal::new(Reason::Internal)).await,
                },
                level: admitted.desk.as_ref().map_or(1, |d| d.level),
                transport: transport.as_str().to_string(),
            };
            let a = kakehashi_store::Audit::new(started_unix, format!("user:{}", asker.user), "session.start")
                .subject(&session_id)
                .reason("allowed")
                .detail(serde_json::json!({
                    "desk": req.desk, "device": device, "class": class.to_string(),
                    "rule": admitted.rule, "policy_version": s.policy_version(),
                    "controls": controls, "end_at": admitted.limits.end_at,
                    "step_up": asker.step_up,
                    "enforced": enforced, "enforcement": enforcement,
                }));
            if let Err(e) = Box::pin(store.start_session(&rec, a)).await {
                warn!(error = %e, "Cannot record the session start; refusing");
                return refuse(&mut io, Refusal::new(Reason::Internal)).await;
            }
        }
        let accepted = SessionAccepted {
            session_id: session_id.clone(),
            controls,
        };
        let live = Arc::new(LiveSession {
            desk: req.desk.clone(),
            device: device.clone(),
            cert: cert.clone(),
            asker: admitted.asker.clone(),
            started: started_unix,
            max_duration: admitted.limits.max_duration_secs,
            end_at: std::sync::atomic::AtomicI64::new(
                admitted.limits.end_at.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)),
            ),
            end: CancellationToken::new(),
            reason: Mutex::new(None),
            labels: {
                let (level, dept) = desk_labels(admitted.desk.as_ref());
                SessionLabels { user: user.clone(), class: class.to_string(), level, dept, transport }
            },
            agent_enforces,
        });
        s.live
            .lock()
            .expect("live lock")
            .insert(session_id.clone(), live.clone());
        let _guard = LiveGuard {
            s: &s,
            id: session_id.clone(),
        };
        let m = &s.metrics;
        let class_label = class.to_string();
        let (level, dept) = desk_labels(admitted.desk.as_ref());
        let active = m.sessions_active.with_label_values(&[level.as_str(), class_label.as_str(), dept.as_str(), transport.as_str()]);
        active.inc();
        update_capacity(&s);
        let counters = Counters::default();
        // A revocation or a policy change between the checks above and the
        // insert into the live table is caught here.
        if let Err(reason) = check_cert(&s, &cert) {
            live.end(reason);
        }
        let result = if live.end.is_cancelled() {
            None
        } else if write_message(&mut io, &accepted).await.is_err() {
            Some(Err(std::io::Error::other("the laptop left before the session opened")))
        } else {
            info!(setup_ms = started.elapsed().as_millis() as u64, rule = ?admitted.rule, end_at = ?admitted.limits.end_at, "Session started");
            m.session_setup.observe(started.elapsed().as_secs_f64());
            m.sessions_started.with_label_values(&[class_label.as_str(), transport.as_str()]).inc();
            let idle = admitted
                .limits
                .idle_timeout_secs
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            tokio::select! {
                r = splice_counted(&mut io, &mut agent, &counters) => Some(r),
                _ = live.end.cancelled() => None,
                _ = s.force.cancelled() => None,
                _ = idle_watch(&counters, idle, &live) => None,
            }
        };
        let (up, down) = counters.get();
        let secs = started.elapsed().as_secs();
        let by_gateway = live.reason.lock().expect("reason lock").clone();
        let end_reason: String = match (result, by_gateway) {
            (Some(Ok(_)), _) => {
                info!(bytes_up = up, bytes_down = down, secs, "Session ended");
                "closed".into()
            }
            (Some(Err(e)), _) => {
                info!(error = %e, bytes_up = up, bytes_down = down, secs, "Session ended by a peer");
                "peer_error".into()
            }
            (None, Some(r)) => {
                info!(reason = %r.code, bytes_up = up, bytes_down = down, secs, "Session ended by the gateway");
                // Remember why first, then close the stream: the laptop asks why.
                s.ended.lock().expect("ended lock").insert(session_id.clone(), device.clone(), r.clone());
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                r.code
            }
            (None, None) => {
                info!(bytes_up = up, bytes_down = down, secs, "Session ended: gateway shutting down");
                s.ended.lock().expect("ended lock").insert(session_id.clone(), device.clone(), Refusal::new(Reason::ShuttingDown));
                Reason::ShuttingDown.code().into()
            }
        };
        if let (Some(store), Some(asker)) = (&s.store, &admitted.asker) {
            let end = kakehashi_store::SessionEnd {
                reason: end_reason.clone(),
                bytes_up: up,
                bytes_down: down,
            };
            let a = kakehashi_store::Audit::new(kakehashi_store::unix_now(), format!("user:{}", asker.user), "session.end")
                .subject(&session_id)
                .reason(&end_reason)
                .detail(serde_json::json!({ "desk": req.desk, "device": device, "bytes_up": up, "bytes_down": down, "secs": secs }));
            if let Err(e) = Box::pin(store.end_session(&session_id, &end, a)).await {
                warn!(error = %e, "Cannot record the session end");
            }
        }
        m.bytes.with_label_values(&["up"]).inc_by(up);
        m.bytes.with_label_values(&["down"]).inc_by(down);
        m.sessions_ended.with_label_values(&[reason_label(&end_reason)]).inc();
        active.dec();
        drop(permit);
        update_capacity(&s);
    }
    .instrument(span)
    .await
}

/// The audit log's words for a session to a desk registered as non-RDP.
pub const NOT_ENFORCED_NON_RDP: &str = "controls not enforced: non-RDP desk";

/// Open a stream to the desk's agent, hand it the signed ticket and wait for
/// its answer. On success the stream is ready to splice, with whether the
/// agent enforces controls. With `must_enforce`, an agent that does not is
/// refused (`desk_not_enforcing`) before it is sent anything.
async fn open_to_agent(
    s: &Arc<Shared>,
    claims: TicketClaims,
    must_enforce: bool,
) -> Result<(BoxIo, bool), Refusal> {
    let link = {
        let agents = s.agents.lock().expect("agents lock");
        agents
            .get(&claims.desk)
            .map(|e| (e.link.clone(), e.enforces))
    };
    let Some((link, enforces)) = link else {
        return Err(Refusal::new(Reason::DeskOffline));
    };
    if must_enforce && !enforces {
        warn!(
            desk = %claims.desk,
            controls = ?claims.controls,
            "Session refused: the controls restrict something, the desk's agent does not enforce them ([rdp] enforce = false, or an older agent) and the desk is not registered as non-RDP"
        );
        return Err(Refusal::new(Reason::DeskNotEnforcing));
    }
    let timeout = s.cfg.session_setup_timeout;
    let setup = async {
        let mut io: BoxIo = match link {
            AgentLink::Quic(conn) => match conn.open_bi().await {
                Ok(bi) => Box::new(QuicStream::new(bi)),
                Err(e) => {
                    debug!(error = %e, "Agent tunnel lost");
                    return Err(Refusal::new(Reason::DeskOffline));
                }
            },
            AgentLink::Tcp { control } => {
                let channel = random_hex(16);
                let (tx, rx) = oneshot::channel();
                s.pending.lock().expect("pending lock").insert(
                    channel.clone(),
                    PendingChannel {
                        desk: claims.desk.clone(),
                        deliver: tx,
                    },
                );
                let guard = PendingGuard {
                    s,
                    channel: channel.clone(),
                };
                let msg = OpenDataChannel { channel }.to_frame().expect("small frame");
                if control.send(msg).await.is_err() {
                    return Err(Refusal::new(Reason::DeskOffline));
                }
                let io = rx.await.map_err(|_| Refusal::new(Reason::DeskOffline))?;
                drop(guard);
                io
            }
        };
        let ticket = s.signer.sign(&claims).map_err(|e| {
            warn!(error = %e, "Cannot sign the ticket");
            Refusal::new(Reason::Internal)
        })?;
        let f = frame::encode(FrameKind::Ticket, &ticket)
            .map_err(|_| Refusal::new(Reason::Internal))?;
        write_raw(&mut io, &f)
            .await
            .map_err(|_| Refusal::new(Reason::DeskOffline))?;
        let reply = read_frame(&mut io).await.map_err(|e| {
            warn!(error = %e, "Agent did not answer the ticket");
            Refusal::new(Reason::DeskOffline)
        })?;
        match reply.kind {
            FrameKind::TicketAccepted => Ok((io, enforces)),
            FrameKind::Refused => {
                let r = Refusal::from_frame(&reply)
                    .unwrap_or_else(|_| Refusal::new(Reason::ProtocolError));
                warn!(reason = %r.code, "Agent refused the session");
                Err(r)
            }
            other => {
                warn!(kind = ?other, "Unexpected frame from agent");
                Err(Refusal::new(Reason::ProtocolError))
            }
        }
    };
    match tokio::time::timeout(timeout, setup).await {
        Ok(r) => r,
        Err(_) => {
            warn!("Agent did not set the session up in time");
            Err(Refusal::new(Reason::Timeout))
        }
    }
}

/// Removes a pending data channel however session setup ends.
struct PendingGuard<'a> {
    s: &'a Shared,
    channel: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.s
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.channel);
    }
}

fn register(
    s: &Shared,
    desk: &str,
    cert: PeerCert,
    link: AgentLink,
    transport: Transport,
    enforces: bool,
) -> (u64, CancellationToken) {
    let generation = s.generation.fetch_add(1, Ordering::Relaxed);
    let replaced = CancellationToken::new();
    let old = s.agents.lock().expect("agents lock").insert(
        desk.to_string(),
        AgentEntry {
            generation,
            cert,
            link,
            transport,
            enforces,
            replaced: replaced.clone(),
        },
    );
    if let Some(old) = old {
        s.metrics
            .agents_online
            .with_label_values(&[old.transport.as_str()])
            .dec();
        info!(desk, old_transport = %old.transport, "Newer tunnel replaces the previous one");
        old.replaced.cancel();
    }
    info!(desk, %transport, enforces, "Agent online");
    s.metrics
        .agents_online
        .with_label_values(&[transport.as_str()])
        .inc();
    (generation, replaced)
}

fn unregister(s: &Shared, desk: &str, generation: u64) {
    let mut agents = s.agents.lock().expect("agents lock");
    if agents.get(desk).is_some_and(|e| e.generation == generation) {
        if let Some(e) = agents.remove(desk) {
            s.metrics
                .agents_online
                .with_label_values(&[e.transport.as_str()])
                .dec();
        }
        info!(desk, "Agent offline");
    }
}

async fn handle_agent_quic(s: Arc<Shared>, conn: quinn::Connection, desk: String, cert: PeerCert) {
    // The first stream the agent opens is its control stream.
    let hello = async {
        let bi = conn.accept_bi().await?;
        let mut ctl = QuicStream::new(bi);
        let f = read_frame(&mut ctl).await?;
        let h = AgentHello::from_frame(&f)?;
        let welcome = AgentWelcome {
            gateway: s.cfg.name.clone(),
            ping_interval_secs: s.cfg.keepalive.as_secs() as u32,
            filter_reports: true,
        };
        write_message(&mut ctl, &welcome).await?;
        anyhow::Ok((ctl, h))
    };
    // Boxed, so the tunnel's task does not keep room for the handshake.
    let (ctl, hello) = match tokio::time::timeout(s.cfg.handshake_timeout, Box::pin(hello)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(desk, error = %format!("{e:#}"), "Agent hello failed");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::ProtocolError.code().as_bytes(),
            );
            return;
        }
        Err(_) => {
            warn!(desk, "Agent hello timed out");
            conn.close(
                quinn::VarInt::from_u32(2),
                Reason::Timeout.code().as_bytes(),
            );
            return;
        }
    };
    debug!(desk, software = %hello.software, enforces = hello.enforces, "Agent hello");
    let (generation, replaced) = register(
        &s,
        &desk,
        cert,
        AgentLink::Quic(conn.clone()),
        Transport::Quic,
        hello.enforces,
    );
    // The control stream carries the agent's filter reports.
    let reader = tokio::spawn(read_agent_control(
        s.clone(),
        desk.clone(),
        ctl,
        Arc::new(Mutex::new(Instant::now())),
    ));
    tokio::select! {
        e = conn.closed() => debug!(desk, reason = %e, "Agent tunnel closed"),
        _ = replaced.cancelled() => conn.close(quinn::VarInt::from_u32(3), b"replaced by a newer tunnel"),
        _ = s.force.cancelled() => conn.close(quinn::VarInt::from_u32(0), b"gateway shutting down"),
    }
    reader.abort();
    unregister(&s, &desk, generation);
}

/// An agent's TCP connection: a control tunnel (AgentHello) or a data
/// connection for one session (DataChannelHello).
async fn handle_agent_tcp(s: Arc<Shared>, mut io: BoxIo, desk: String, cert: PeerCert) {
    let first = match tokio::time::timeout(s.cfg.handshake_timeout, read_frame(&mut io)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            warn!(desk, error = %e, "Bad first frame from agent");
            return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
        }
        Err(_) => return refuse(&mut io, Refusal::new(Reason::Timeout)).await,
    };
    match first.kind {
        FrameKind::DataChannelHello => {
            let Ok(h) = DataChannelHello::from_frame(&first) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            let pending = {
                let mut p = s.pending.lock().expect("pending lock");
                // Only the desk the channel was opened for may claim it.
                match p.get(&h.channel) {
                    Some(e) if e.desk == desk => p.remove(&h.channel),
                    _ => None,
                }
            };
            match pending {
                Some(p) => {
                    let _ = p.deliver.send(io);
                }
                None => {
                    warn!(desk, "Data connection for an unknown channel");
                    refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
                }
            }
        }
        FrameKind::AgentHello => {
            let Ok(hello) = AgentHello::from_frame(&first) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            debug!(desk, software = %hello.software, enforces = hello.enforces, "Agent hello");
            let welcome = AgentWelcome {
                gateway: s.cfg.name.clone(),
                ping_interval_secs: s.cfg.keepalive.as_secs() as u32,
                filter_reports: true,
            };
            if write_message(&mut io, &welcome).await.is_err() {
                return;
            }
            serve_agent_control(s, io, desk, cert, hello.enforces).await;
        }
        _ => refuse(&mut io, Refusal::new(Reason::ProtocolError)).await,
    }
}

async fn serve_agent_control(
    s: Arc<Shared>,
    io: BoxIo,
    desk: String,
    cert: PeerCert,
    enforces: bool,
) {
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let (generation, replaced) = register(
        &s,
        &desk,
        cert,
        AgentLink::Tcp { control: tx },
        Transport::Tcp,
        enforces,
    );
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let mut reader = tokio::spawn(read_agent_control(
        s.clone(),
        desk.clone(),
        rd,
        last_seen.clone(),
    ));
    let mut ping = tokio::time::interval(s.cfg.keepalive);
    let ping_frame = frame::encode(FrameKind::Ping, &[]).expect("empty frame");
    loop {
        tokio::select! {
            _ = s.force.cancelled() => break,
            _ = replaced.cancelled() => break,
            _ = &mut reader => { debug!(desk, "Agent control connection closed"); break }
            Some(f) = rx.recv() => if write_raw(&mut wr, &f).await.is_err() { break },
            _ = ping.tick() => {
                if last_seen.lock().expect("last_seen lock").elapsed() > s.cfg.idle_timeout {
                    warn!(desk, "Agent silent past the idle timeout; dropping tunnel");
                    break;
                }
                if write_raw(&mut wr, &ping_frame).await.is_err() { break }
            }
        }
    }
    reader.abort();
    unregister(&s, &desk, generation);
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

async fn read_agent_control<R: tokio::io::AsyncRead + Unpin>(
    s: Arc<Shared>,
    desk: String,
    mut rd: R,
    last_seen: Arc<Mutex<Instant>>,
) {
    loop {
        match read_frame(&mut rd).await {
            Ok(f) if f.kind == FrameKind::Pong || f.kind == FrameKind::Ping => {
                *last_seen.lock().expect("last_seen lock") = Instant::now();
            }
            Ok(f) if f.kind == FrameKind::FilterReport => {
                *last_seen.lock().expect("last_seen lock") = Instant::now();
                match FilterReport::from_frame(&f) {
                    // Boxed: the report's audit write is a large future, and
                    // this task lives as long as the agent's tunnel.
                    Ok(r) => Box::pin(record_filter_report(&s, &desk, r)).await,
                    Err(e) => {
                        warn!(desk, error = %e, "Bad filter report from agent");
                        return;
                    }
                }
            }
            Ok(f) => {
                warn!(kind = ?f.kind, "Unexpected frame on agent control connection");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A blocked RDP attempt (or a session the filter refused) reported by a desk's
/// agent: counted, logged with the session id, and audited when there is a store.
async fn record_filter_report(s: &Shared, desk: &str, r: FilterReport) {
    // An agent speaks only for its own desk's sessions.
    let live_desk = s
        .live
        .lock()
        .expect("live lock")
        .get(&r.session_id)
        .map(|l| l.desk.clone());
    if live_desk.is_some_and(|d| d != desk) {
        warn!(desk, session = %r.session_id, "Filter report for another desk's session; ignored");
        return;
    }
    let kind = match r.kind.as_str() {
        "static_channel" => "static_channel",
        "dynamic_channel" => "dynamic_channel",
        "device" => "device",
        "clipboard_data" => "clipboard_data",
        "file_contents" => "file_contents",
        "session_refused" => "session_refused",
        _ => "other",
    };
    s.metrics
        .rdp_blocked
        .with_label_values(&[kind])
        .inc_by(u64::from(r.count));
    info!(
        desk,
        session = %r.session_id,
        kind,
        what = %r.what,
        direction = r.direction.as_deref().unwrap_or("-"),
        count = r.count,
        "RDP blocked"
    );
    let reason = if kind == "session_refused" {
        r.what.as_str()
    } else {
        kind
    };
    audit_event(
        s,
        &format!("agent:{desk}"),
        "rdp.blocked",
        &r.session_id,
        reason,
        serde_json::json!({
            "desk": desk,
            "kind": r.kind,
            "what": r.what,
            "direction": r.direction,
            "count": r.count,
        }),
    )
    .await;
}

/// Confidentiality level and department labels of a desk, for metrics
/// (bounded: three levels, the municipality's departments). A bare test
/// relay knows neither: "unknown".
fn desk_labels(d: Option<&crate::admission::DeskFacts>) -> (String, String) {
    match d {
        Some(d) => (d.level.to_string(), d.department.clone()),
        None => ("unknown".into(), "unknown".into()),
    }
}

/// A bounded metrics label for a refusal or end reason code (from the
/// gateway, the policy or an agent); anything else is "other".
fn reason_label(code: &str) -> &'static str {
    match code {
        "closed" => "closed",
        "peer_error" => "peer_error",
        c => Reason::from_code(c)
            .map(Reason::code)
            .or_else(|| {
                kakehashi_policy::ReasonCode::ALL
                    .iter()
                    .find(|r| r.code() == c)
                    .map(|r| r.code())
            })
            .unwrap_or("other"),
    }
}

fn update_capacity(s: &Shared) {
    let max = s.cfg.max_sessions.max(1) as f64;
    s.metrics
        .capacity_used
        .set(s.active_sessions() as f64 / max);
}

/// A bounded label for why a TLS-over-TCP handshake failed.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::Revoked => Reason::CertRevoked.code(),
            CertificateError::Expired | CertificateError::NotValidYet => Reason::CertExpired.code(),
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Reason::CertUnknownCa.code()
            }
            _ => Reason::CertRejected.code(),
        },
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::NoApplicationProtocol) => "wrong_alpn",
        Some(_) => "tls_error",
        None => "io_error",
    }
}

/// A bounded label for why a QUIC handshake failed.
fn quic_handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            if (0x100..0x200).contains(&code) {
                kakehashi_transport::explain::alert_reason((code - 0x100) as u8).code()
            } else {
                "quic_error"
            }
        }
        quinn::ConnectionError::TimedOut => "handshake_timeout",
        _ => "quic_error",
    }
}

/// notAfter of a certificate as unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// Identity of the laptop at the other end, for logins and the audit log.
fn laptop(
    device: &str,
    class: kakehashi_pki::TerminalClass,
    cert: &PeerCert,
) -> crate::login::Laptop {
    crate::login::Laptop {
        device: device.to_string(),
        class,
        serial: kakehashi_pki::hex_serial_bytes(&cert.serial),
        peer: String::new(),
    }
}

/// A `RedeemLogin` or `Logout` on a terminal stream: answer and close.
async fn login_frame(
    s: &Shared,
    mut io: BoxIo,
    f: &kakehashi_proto::Frame,
    laptop: &crate::login::Laptop,
) {
    use kakehashi_proto::message::{Logout, RedeemLogin};
    let Some(store) = &s.store else {
        return refuse(
            &mut io,
            Refusal::new(Reason::Internal).with_detail("this gateway has no store for logins"),
        )
        .await;
    };
    let id = &s.cfg.identity;
    match f.kind {
        FrameKind::RedeemLogin => {
            let Ok(req) = RedeemLogin::from_frame(f) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            match crate::login::redeem(store, laptop, &req, id.token_lifetime, id.utc_offset_secs)
                .await
            {
                Ok(res) => {
                    s.metrics.logins.inc();
                    let _ = write_message(&mut io, &res).await;
                    let _ = io.shutdown().await;
                }
                Err(refusal) => {
                    s.metrics
                        .auth_failures
                        .with_label_values(&[reason_label(&refusal.code)])
                        .inc();
                    refuse(&mut io, refusal).await
                }
            }
        }
        _ => {
            let Ok(req) = Logout::from_frame(f) else {
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            };
            match crate::login::logout(store, laptop, &req).await {
                Ok(()) => {
                    let bye = frame::encode(FrameKind::LoggedOut, &[]).expect("empty frame");
                    let _ = write_raw(&mut io, &bye).await;
                    let _ = io.shutdown().await;
                }
                Err(reason) => refuse(&mut io, Refusal::new(reason)).await,
            }
        }
    }
}

/// Append a pure event to the audit log (when there is a store).
async fn audit_event(
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

/// What the policy allowed for one session.
struct Admitted {
    controls: kakehashi_proto::Controls,
    limits: kakehashi_policy::Limits,
    rule: Option<String>,
    /// `None` on a bare test relay.
    asker: Option<crate::admission::Asker>,
    desk: Option<crate::admission::DeskFacts>,
}

/// Decide a session request: the live policy on the store's current facts.
/// Fails closed: no store or no person means no session.
async fn admit(
    s: &Shared,
    req: &SessionRequest,
    device: &str,
    class: kakehashi_pki::TerminalClass,
    login: Option<&crate::login::LoggedIn>,
) -> Result<Admitted, (Refusal, Option<String>)> {
    use crate::admission::{Asker, Outcome, STEP_UP_WINDOW_SECS};
    if s.cfg.relay_without_policy {
        return Ok(Admitted {
            controls: s.cfg.testing_controls.unwrap_or_default(),
            limits: kakehashi_policy::Limits::default(),
            rule: None,
            asker: None,
            desk: None,
        });
    }
    let (Some(store), Some(holder)) = (&s.store, &s.policy) else {
        return Err((Refusal::new(Reason::PolicyUnavailable), None));
    };
    let Some(login) = login else {
        return Err((Refusal::new(Reason::LoginRequired), None));
    };
    let token = req
        .token
        .as_ref()
        .map(|t| *kakehashi_store::Hash256::digest(t.expose()).as_bytes())
        .ok_or((Refusal::new(Reason::LoginRequired), None))?;
    let now = kakehashi_store::unix_now();
    let fresh = now.saturating_sub(login.login_at) <= STEP_UP_WINDOW_SECS
        && !s
            .step_ups
            .lock()
            .expect("step-up lock")
            .contains_key(&token);
    let asker = Asker {
        user: login.user.clone(),
        login_at: login.login_at,
        device: device.to_string(),
        class: crate::admission::class_of(class),
        desk: req.desk.clone(),
        step_up: fresh,
    };
    let loaded = holder.get();
    match crate::admission::decide(
        store,
        &asker,
        &loaded.policy,
        time::OffsetDateTime::now_utc(),
    )
    .await
    {
        Outcome::Allow {
            rule,
            controls,
            limits,
            desk,
        } => {
            if limits.step_up_required {
                // One fresh login, one level-3 session.
                let mut used = s.step_ups.lock().expect("step-up lock");
                used.retain(|_, at| now.saturating_sub(*at) <= STEP_UP_WINDOW_SECS);
                if used.insert(token, login.login_at).is_some() {
                    let r = kakehashi_policy::ReasonCode::StepUpRequired.refusal(Some(&rule));
                    return Err((r, Some(rule)));
                }
            }
            Ok(Admitted {
                controls,
                limits,
                rule: Some(rule),
                asker: Some(asker),
                desk: Some(desk),
            })
        }
        Outcome::Deny { refusal, rule } => Err((refusal, rule)),
    }
}

/// A laptop asks why one of its sessions ended.
async fn answer_end_query(s: &Shared, mut io: BoxIo, f: &kakehashi_proto::Frame, device: &str) {
    use kakehashi_proto::message::{SessionEndQuery, SessionEndReport};
    let Ok(q) = SessionEndQuery::from_frame(f) else {
        return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
    };
    // Only the laptop that held the session learns anything about it.
    let reason = s
        .ended
        .lock()
        .expect("ended lock")
        .by_id
        .get(&q.session_id)
        .filter(|(d, _)| d == device)
        .map(|(_, r)| r.clone());
    let report = SessionEndReport {
        session_id: q.session_id,
        reason,
    };
    let _ = write_message(&mut io, &report).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
}

/// After a crash, sessions recorded as started were never recorded as
/// ended: close them now, so reports and the dashboard stay true.
async fn close_orphaned_sessions(store: &kakehashi_store::Store) {
    let open = match store.open_sessions().await {
        Ok(v) => v,
        Err(e) => return warn!(error = %e, "Cannot read open sessions"),
    };
    for rec in open {
        let end = kakehashi_store::SessionEnd {
            reason: "gateway_restart".into(),
            bytes_up: 0,
            bytes_down: 0,
        };
        let a = kakehashi_store::Audit::new(kakehashi_store::unix_now(), "gateway", "session.end")
            .subject(&rec.id)
            .reason("gateway_restart")
            .detail(serde_json::json!({ "desk": rec.desk_id, "device": rec.device_id }));
        if let Err(e) = store.end_session(&rec.id, &end, a).await {
            warn!(session = %rec.id, error = %e, "Cannot close an orphaned session");
        }
    }
}

/// Audit actions that can change a live session's decision.
fn affects_sessions(action: &str) -> bool {
    ["policy.", "device.", "desk.", "plan.", "bcp.", "user."]
        .iter()
        .any(|p| action.starts_with(p))
}

/// Live re-evaluation. The audit log is the change feed: every change to
/// users, devices, desks, plans, BCP declarations and the policy is written
/// with its audit record in one transaction, by this gateway, another one
/// of the cluster or the admin CLI. Every `[policy] watch_ms` the new
/// records are read; if any can change a decision, every live session is
/// re-decided, and those no longer allowed end with the reason. Sessions
/// reaching their end time are re-decided as well (hours, plan window, BCP
/// end, MFA age, maximum duration).
async fn watch_changes(s: Arc<Shared>) {
    let (Some(store), Some(holder)) = (&s.store, &s.policy) else {
        return;
    };
    let mut seen = match store.audit_head().await {
        Ok((seq, _)) => seq,
        Err(e) => {
            warn!(error = %e, "Cannot read the audit log head; live re-evaluation off");
            return;
        }
    };
    let mut tick = tokio::time::interval(s.cfg.policy_watch);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A change not yet applied to the live sessions (kept across a failed pass).
    let mut dirty = false;
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut changed = false;
        let mut policy_changed = false;
        loop {
            let page = match store.audit_page(seen, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "Cannot read the audit log");
                    break;
                }
            };
            for r in &page {
                seen = seen.max(r.seq);
                if affects_sessions(&r.action) {
                    changed = true;
                    policy_changed |= r.action.starts_with("policy.");
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        if policy_changed {
            match store.current_policy().await {
                Ok(Some(doc)) => match crate::admission::parse_policy(&doc.text) {
                    Ok(policy) => {
                        if holder.replace(crate::admission::Loaded {
                            policy,
                            version: doc.version,
                        }) {
                            info!(version = doc.version, author = %doc.author, "New access policy in force");
                        }
                    }
                    Err(e) => {
                        warn!(version = doc.version, error = %format!("{e:#}"), "Stored policy does not parse; keeping the one in force")
                    }
                },
                Ok(None) => {}
                Err(e) => warn!(error = %e, "Cannot read the policy"),
            }
        }
        dirty |= changed;
        let changed = dirty;
        let now = kakehashi_store::unix_now();
        let live: Vec<(String, Arc<LiveSession>)> = {
            let live = s.live.lock().expect("live lock");
            live.iter()
                .filter(|(_, l)| l.asker.is_some())
                .filter(|(_, l)| {
                    let end = l.end_at.load(Ordering::Relaxed);
                    changed || (end != 0 && end <= now)
                })
                .map(|(id, l)| (id.clone(), l.clone()))
                .collect()
        };
        if live.is_empty() {
            dirty = false;
            continue;
        }
        let loaded = holder.get();
        let started = Instant::now();
        let at = time::OffsetDateTime::now_utc();
        // One bulk read, then a pure decision per session.
        let snapshot = match crate::admission::Snapshot::load(store, &loaded.policy, at).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot read the store to re-decide live sessions; retrying");
                continue;
            }
        };
        dirty = false;
        let mut ended = 0usize;
        for (id, l) in &live {
            let Some(asker) = &l.asker else { continue };
            let outcome = snapshot.decide(asker, &loaded.policy, at);
            let refusal = match outcome {
                crate::admission::Outcome::Deny { refusal, .. } => Some(refusal),
                // Registered as an RDP desk since, with controls its agent does not enforce.
                crate::admission::Outcome::Allow { controls, desk, .. }
                    if controls.is_restrictive()
                        && desk.service != kakehashi_store::DeskService::Other
                        && !l.agent_enforces =>
                {
                    Some(Refusal::new(Reason::DeskNotEnforcing))
                }
                crate::admission::Outcome::Allow { limits, .. } => {
                    let by_duration = l.max_duration.map(|d| {
                        l.started
                            .saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
                    });
                    let end = [
                        limits.end_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX)),
                        by_duration,
                    ]
                    .into_iter()
                    .flatten()
                    .min();
                    match end {
                        Some(e) if e <= kakehashi_store::unix_now() => {
                            Some(Refusal::new(Reason::SessionTimeLimit))
                        }
                        e => {
                            l.end_at.store(e.unwrap_or(0), Ordering::Relaxed);
                            None
                        }
                    }
                }
            };
            if let Some(r) = refusal {
                info!(session = %id, desk = %l.desk, device = %l.device, reason = %r.code, "Ending a session the policy no longer allows");
                l.end_with(r);
                ended += 1;
            }
        }
        debug!(
            checked = live.len(),
            ended,
            ms = started.elapsed().as_millis() as u64,
            "Live sessions re-decided"
        );
    }
}

/// `[testing] policy_minute_secs`: the rule's maximum duration and idle
/// timeout with `minute` seconds per minute, and the end time they give.
fn shorter_minutes(
    mut l: kakehashi_policy::Limits,
    minute: u64,
    now: u64,
) -> kakehashi_policy::Limits {
    l.max_duration_secs = l.max_duration_secs.map(|d| d / 60 * minute);
    l.idle_timeout_secs = l
        .idle_timeout_secs
        .map(|i| u32::try_from(u64::from(i) / 60 * minute).unwrap_or(u32::MAX));
    if let Some(d) = l.max_duration_secs {
        let by_duration = now.saturating_add(d);
        l.end_at = Some(l.end_at.map_or(by_duration, |e| e.min(by_duration)));
    }
    l
}

/// Ends the session with `session_idle` when the laptop sends nothing for
/// `idle` (the deciding rule's idle timeout); never returns without one.
/// Input is what counts: a desk repainting its screen is not activity.
async fn idle_watch(counters: &Counters, idle: Option<Duration>, live: &LiveSession) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let step = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut last = counters.get().0;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = counters.get().0;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            live.end(Reason::SessionIdle);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn live() -> LiveSession {
        LiveSession {
            desk: "D".into(),
            device: "L".into(),
            cert: Arc::new(PeerCertFacts {
                serial: Box::new([1]),
                not_before: 0,
                not_after: i64::MAX,
            }),
            asker: None,
            labels: SessionLabels {
                user: None,
                class: "home".into(),
                level: "1".into(),
                dept: "d".into(),
                transport: Transport::Quic,
            },
            started: 0,
            max_duration: None,
            end_at: std::sync::atomic::AtomicI64::new(0),
            end: CancellationToken::new(),
            reason: Mutex::new(None),
            agent_enforces: false,
        }
    }

    #[tokio::test]
    async fn idle_sessions_end_and_typing_keeps_them_open() {
        let c = Counters::default();
        let l = live();
        // Input every 50 ms keeps a 300 ms idle timeout from firing…
        let typing = async {
            for _ in 0..12 {
                c.a_to_b.fetch_add(10, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = typing => {}
            _ = idle_watch(&c, Some(Duration::from_millis(300)), &l) => panic!("ended while typing"),
        }
        assert!(!l.end.is_cancelled());
        // …then silence ends it with session_idle, even with screen updates.
        let screen = async {
            loop {
                c.b_to_a.fetch_add(1000, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = screen => unreachable!(),
            _ = idle_watch(&c, Some(Duration::from_millis(300)), &l) => {}
        }
        assert!(l.end.is_cancelled());
        assert_eq!(
            l.reason.lock().unwrap().as_ref().unwrap().code,
            "session_idle"
        );
        // No idle timeout: never fires.
        let r =
            tokio::time::timeout(Duration::from_millis(200), idle_watch(&c, None, &live())).await;
        assert!(r.is_err());
    }
}
