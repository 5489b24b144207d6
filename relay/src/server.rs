//! [`Relay`]: binding the laptop and agent listeners, one accept loop per
//! listener with its caps and handshake time-out, and the shutdown order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kakehashi_pki::Identity;
use kakehashi_proto::{Reason, Refusal, TicketSigner, ALPN_AGENT, ALPN_TERMINAL};
use kakehashi_transport::limit::SourceLimits;
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::serve::{serve, BusyCheck, Caps, QuicListener, Refused, Service};
use kakehashi_transport::server_cert::ReloadingCert;
use kakehashi_transport::tls::{self, PeerCertFacts, ReloadingClientVerifier, TlsFiles};
use kakehashi_transport::tls_stream;
use kakehashi_transport::tunnel::Tunnel;
use kakehashi_transport::{tune_tcp, BoxIo, Shutdown, Transport};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::config::Config;
use crate::metrics::Metrics;

use crate::agents::{handle_agent, handle_agent_quic};
use crate::crl::{check_cert, watch_crl};
use crate::sessions::{handle_terminal_stream, serve_terminal_quic};
use crate::shared::{refuse, BoundAddrs, EndedSessions, PeerCert, Role, Shared};
use crate::watch::watch_changes;

/// The relay with its listeners bound, ready to serve.
pub struct Relay {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addrs: BoundAddrs,
    pub(crate) terminal_quic: Option<quinn::Endpoint>,
    pub(crate) terminal_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    pub(crate) agent_quic: Option<quinn::Endpoint>,
    pub(crate) agent_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// Session rows this gateway's previous run left open (it was killed),
    /// closed with `gateway_restart` once serving starts.
    pub(crate) left_open: Vec<kakehashi_store::SessionRecord>,
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
            warn!(minute_secs = minute, "[testing] policy_minute: session time limits and idle timeouts run {minute} seconds per minute (tests only)");
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
        // The gateway certificate follows its files (renewed without a
        // restart: `crl::watch_crl` looks every second).
        let server_cert = ReloadingCert::load(&cfg.cert, &cfg.key)?;
        let term_tls = tls::server_config_with_resolver(
            server_cert.clone(),
            verifier.clone(),
            ALPN_TERMINAL,
            tickets.clone(),
        )?;
        let mut agent_tls = tls::server_config_with_resolver(
            server_cert.clone(),
            verifier.clone(),
            ALPN_AGENT,
            tickets,
        )?;
        // An agent spends one ticket on every attempt, including those that
        // find no gateway (a QUIC ClientHello leaves at once), and keeps up to
        // 8; four per connection still leave it one after a restart of a few
        // seconds.
        agent_tls.send_tls13_tickets = 4;
        // QUIC stateless resets keyed by a secret that survives a restart:
        // after a kill -9, the agents' and laptops' next packets to the new
        // process end their dead connections at once (see `ResetKey`).
        let ticket_key_file = std::fs::read(&cfg.ticket_key)
            .with_context(|| format!("cannot read {}", cfg.ticket_key.display()))?;
        let reset_key = || kakehashi_transport::quic::ResetKey::derive(&ticket_key_file);
        // Every QUIC connection of the gateway buffers at most its windows
        // (see `budget`): small enough that the budget holds many sessions,
        // large enough for a screen update in one round trip.
        let quic_limits = |max_streams| QuicLimits {
            max_streams,
            keepalive: cfg.keepalive,
            idle_timeout: cfg.idle_timeout,
            stream_window: cfg.quic_window,
            conn_window: cfg.quic_window,
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
                    reset_key(),
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
                let ep =
                    kakehashi_transport::quic::server(a, agent_tls, quic_limits(4), reset_key())?;
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
                Some(crate::admission::PolicyHolder::new(loaded))
            }
            (None, false) => {
                warn!("No [store]: no users, desks or policy; every session will be refused (policy_unavailable)");
                None
            }
            (_, true) => None,
        };
        let (member_generation, left_open) = match (&store, cfg.relay_without_policy) {
            (Some(store), false) => crate::cluster::join(store, &cfg, &addrs).await?,
            _ => (0, Vec::new()),
        };
        metrics.sessions_max.set(cfg.max_sessions as i64);
        let budget = crate::budget::Budget::new(
            cfg.memory_budget,
            &quic_limits(0),
            metrics.memory_reserved.clone(),
        );
        metrics
            .memory_budget
            .set(i64::try_from(budget.total()).unwrap_or(i64::MAX));
        info!(
            budget_mib = budget.total() >> 20,
            quic_sessions = budget.holds(Transport::Quic, Transport::Quic),
            tcp_sessions = budget.holds(Transport::Tcp, Transport::Tcp),
            "Budget of bytes in flight: sessions it holds, all over QUIC or all over TLS/TCP"
        );
        for (name, der) in [("gateway", &m.chain[0]), ("ca", &m.ca[0])] {
            if let Some(t) = not_after(der) {
                metrics.cert_expiry.with_label_values(&[name]).set(t as f64);
            }
        }
        let shared = Arc::new(Shared {
            signer: TicketSigner::new(key),
            agents: Mutex::new(HashMap::new()),
            channels: Default::default(),
            sessions: Arc::new(Semaphore::new(cfg.max_sessions)),
            budget,
            load: Arc::new(crate::load::Load::new(cfg.busy_delay, cfg.busy_cpu_percent)),
            live: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            member_generation,
            feed_seq: Default::default(),
            member_list: Mutex::new(None),
            verifier: verifier.clone(),
            server_cert,
            metrics,
            store,
            policy,
            ended: Mutex::new(EndedSessions::default()),
            unrecorded_ends: Default::default(),
            shutdown: Shutdown::new(),
            cfg,
        });
        Ok(Self {
            shared,
            addrs,
            terminal_quic,
            terminal_tcp,
            agent_quic,
            agent_tcp,
            left_open,
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

    /// Serve until `stop` is cancelled, then stop accepting, give live
    /// sessions the grace period, and close everything. Tasks spawned on
    /// [`Shared::shutdown`] (the portal, the metrics listener) stop with it.
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        let s = self.shared.clone();
        let sd = s.shutdown.clone();
        sd.spawn(watch_crl(s.clone()));
        sd.spawn(crate::load::probe(
            s.load.clone(),
            s.metrics.scheduling_delay.clone(),
            s.metrics.cpu_used.clone(),
            sd.clone(),
        ));
        if s.policy.is_some() {
            sd.spawn(watch_changes(s.clone()));
            sd.spawn(crate::cluster::run(s.clone(), s.member_generation));
            sd.spawn(crate::cluster::seal(s.clone()));
        }
        if let (Some(store), false) = (&s.store, self.left_open.is_empty()) {
            // After a kill -9 with many sessions, closing their rows one
            // audited write at a time takes seconds (about 1 ms a row): the
            // agents and laptops are served meanwhile.
            sd.spawn(crate::cluster::close_left_open(
                store.clone(),
                self.left_open,
            ));
        }
        // One connection cap per role, shared by its QUIC and TCP listeners.
        // The handshake caps are also what a QUIC listener watches for its Retry threshold.
        let caps = |role: Role, max| {
            let handshakes = s.handshake_limits(role);
            let caps = Caps {
                connections: SourceLimits::new(max, max),
                handshakes: Some(handshakes.clone()),
                busy: None,
            };
            (caps, handshakes)
        };
        let (term, term_handshakes) = caps(Role::Terminal, s.cfg.terminal_max_connections);
        let (agent, agent_handshakes) = caps(Role::Agent, s.cfg.agent_max_connections);
        let hto = s.cfg.handshake_timeout;
        for (listener, role, caps, handshakes) in [
            (self.terminal_tcp, Role::Terminal, &term, &term_handshakes),
            (self.agent_tcp, Role::Agent, &agent, &agent_handshakes),
        ] {
            if let Some((l, tls)) = listener {
                let svc = Arc::new(TcpService {
                    s: s.clone(),
                    role,
                    tls,
                    handshakes: handshakes.clone(),
                });
                sd.spawn(serve(l, caps.clone(), hto, svc, sd.clone()));
            }
        }
        for (ep, role, caps, handshakes, retry_above) in [
            (
                &self.terminal_quic,
                Role::Terminal,
                &term,
                term_handshakes,
                s.cfg.terminal_quic_retry_above,
            ),
            (
                &self.agent_quic,
                Role::Agent,
                &agent,
                agent_handshakes,
                s.cfg.agent_quic_retry_above,
            ),
        ] {
            if let Some(ep) = ep.clone() {
                let on_retry = {
                    let s = s.clone();
                    move |peer| s.handshake_limited(role, "quic_retry", peer)
                };
                let l = QuicListener::new(ep, handshakes, retry_above, on_retry);
                let svc = Arc::new(QuicService { s: s.clone(), role });
                let mut caps = caps.clone();
                if role == Role::Terminal {
                    // A new laptop connection while the gateway is short of
                    // CPU is refused before its handshake, the dearest part
                    // of a refusal: QUIC's CONNECTION_REFUSED, which the
                    // client reads as `gateway_busy`. Agents are never
                    // refused: their desks' sessions depend on them. (Over
                    // TLS/TCP the laptop hears `gateway_busy` after its
                    // handshake: TCP has no such cheap refusal to explain.)
                    let load = s.load.clone();
                    caps.busy = Some(BusyCheck(Arc::new(move || load.busy().is_some())));
                }
                sd.spawn(serve(l, caps, hto, svc, sd.clone()));
            }
        }
        info!(gateway = %s.cfg.name, "Gateway serving");

        stop.cancelled().await;
        info!(sessions = s.active_sessions(), "Gateway stopping");
        // Stopping on purpose: agents hear it first, so they stop counting
        // on this gateway before it drains (laptops asking for a session
        // while it drains are refused with the same reason).
        crate::agents::announce_restarting(&s);
        // Draining from now (new sessions are refused with `restarting`),
        // but the process waits for each tunnel to take the notice and
        // write it: with nothing to drain it would exit first.
        sd.drain_token().cancel();
        crate::agents::wait_told(&s, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        sd.stop(s.cfg.shutdown_grace).await;
        for ep in [&self.terminal_quic, &self.agent_quic]
            .into_iter()
            .flatten()
        {
            ep.close(quinn::VarInt::from_u32(0), b"gateway shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
        debug!("Relay stopped");
        Ok(())
    }
}

/// A laptop or agent listener on TLS over TCP.
struct TcpService {
    s: Arc<Shared>,
    role: Role,
    tls: Arc<rustls::ServerConfig>,
    /// The listener's per-source handshake places, taken here for a client
    /// a balancer names ([`Service::forwarder`]).
    handshakes: SourceLimits,
}

impl TcpService {
    /// Before TLS: the client a listed balancer names in its PROXY header,
    /// or the TCP peer itself when it is not a balancer and sends no PROXY
    /// header. `None`: closed (counted and logged here). A client named by
    /// a balancer takes its per-source handshake place here, held in `place`.
    async fn client(
        &self,
        tcp: &mut tokio::net::TcpStream,
        peer: SocketAddr,
        place: &mut Option<kakehashi_transport::limit::Slot>,
    ) -> Option<SocketAddr> {
        use kakehashi_transport::proxy::{self, Forwarded, ProxyRefusal, ReadError};
        if !self.s.cfg.proxy_protocol_from.contains(peer.ip()) {
            // Seen, not taken: a TLS connection goes on untouched. Closed
            // before a byte: TLS fails on it as it always did.
            let mut first = [0u8; 1];
            return match tcp.peek(&mut first).await {
                Ok(1) if proxy::looks_like_proxy(first[0]) => {
                    self.proxy_refused(ProxyRefusal::Untrusted);
                    None
                }
                _ => Some(peer),
            };
        }
        match proxy::read_header(tcp).await {
            Ok(Forwarded::Client(client)) => {
                tracing::Span::current().record("client", tracing::field::display(client));
                match self.handshakes.try_acquire(client.ip()) {
                    Ok(p) => *place = Some(p),
                    Err(_) => {
                        self.s.handshake_limited(self.role, "per_source", client);
                        return None;
                    }
                }
                self.proxy_result("accepted");
                Some(client)
            }
            Ok(Forwarded::Local) => {
                // The balancer's health check: counted, not logged.
                debug!("Balancer's own connection (PROXY LOCAL); closing");
                self.proxy_result("local");
                None
            }
            Err(ReadError::Closed) => {
                debug!("Balancer closed before its PROXY header");
                None
            }
            Err(ReadError::Refused(r)) => {
                self.proxy_refused(r);
                None
            }
            Err(ReadError::Io(e)) => {
                debug!(error = %e, "Reading the PROXY header failed");
                self.s.auth_failure("io_error");
                None
            }
        }
    }

    fn proxy_refused(&self, r: kakehashi_transport::proxy::ProxyRefusal) {
        warn!(reason = r.code(), "PROXY header refused; closing");
        self.proxy_result(r.code());
    }

    fn proxy_result(&self, result: &str) {
        self.s
            .metrics
            .proxy_headers
            .with_label_values(&[self.role.as_str(), result])
            .inc();
    }
}

impl Service for TcpService {
    type Conn = tokio::net::TcpStream;
    /// The stream, who the certificate says the peer is, and the client's
    /// address (the balancer's PROXY header, else the TCP peer's).
    type Ready = (BoxIo, Result<(Identity, PeerCert), Reason>, SocketAddr);

    fn span(&self, peer: SocketAddr) -> tracing::Span {
        // `client`: the address a balancer's PROXY header names.
        info_span!("conn", role = self.role.as_str(), transport = "tcp", %peer, client = tracing::field::Empty)
    }

    fn forwarder(&self, peer: SocketAddr) -> bool {
        self.s.cfg.proxy_protocol_from.contains(peer.ip())
    }

    async fn handshake(&self, mut tcp: Self::Conn, peer: SocketAddr) -> Option<Self::Ready> {
        tune_tcp(&tcp, self.s.cfg.keepalive);
        // A client named by a balancer: its per-source handshake place,
        // held until the end of the handshake.
        let mut place = None;
        let client = self.client(&mut tcp, peer, &mut place).await?;
        // Holds no buffer while the connection is idle (tls_stream).
        match tls_stream::accept(self.tls.clone(), tcp).await {
            Ok(tls) => {
                let ident = peer_identity(&self.s, tls.peer_cert().map(|c| c.as_ref()));
                Some((Box::new(tls), ident, client))
            }
            Err(e) => {
                warn!(error = %e, "TLS handshake refused");
                self.s.auth_failure(handshake_failure(&e));
                None
            }
        }
    }

    fn timed_out(&self, _: SocketAddr) {
        warn!("TLS handshake timed out");
        self.s.auth_failure("handshake_timeout");
    }

    fn refused(&self, peer: SocketAddr, why: Refused) {
        self.s.connection_refused(self.role, peer, why);
    }

    async fn serve(&self, (mut io, ident, client): Self::Ready, _: SocketAddr) {
        let s = self.s.clone();
        match (self.role, ident) {
            (_, Err(reason)) => {
                warn!(
                    reason = reason.code(),
                    "Peer certificate refused after the handshake"
                );
                s.auth_failure(reason.code());
                refuse(&mut io, Refusal::new(reason)).await;
            }
            (Role::Terminal, Ok((id @ Identity::Device { .. }, cert))) => {
                Box::pin(handle_terminal_stream(
                    s,
                    io,
                    id,
                    cert,
                    Transport::Tcp,
                    client,
                ))
                .await;
            }
            (Role::Agent, Ok((Identity::Agent { desk }, cert))) => {
                Box::pin(handle_agent(s, Tunnel::from_tcp(io), desk, cert)).await
            }
            (_, Ok((other, _))) => {
                warn!(identity = ?other, "Certificate of the wrong kind for this listener");
                refuse(&mut io, Refusal::new(Reason::WrongCertificateKind)).await;
            }
        }
    }
}

/// A laptop or agent listener on QUIC.
struct QuicService {
    s: Arc<Shared>,
    role: Role,
}

impl Service for QuicService {
    type Conn = quinn::Incoming;
    type Ready = quinn::Connection;

    fn span(&self, peer: SocketAddr) -> tracing::Span {
        info_span!("conn", role = self.role.as_str(), transport = "quic", %peer)
    }

    async fn handshake(&self, incoming: Self::Conn, _: SocketAddr) -> Option<Self::Ready> {
        let conn = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "QUIC accept failed");
                return None;
            }
        };
        match conn.await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "QUIC handshake refused");
                self.s.auth_failure(quic_handshake_failure(&e));
                None
            }
        }
    }

    fn timed_out(&self, _: SocketAddr) {
        warn!("QUIC handshake timed out");
        self.s.auth_failure("handshake_timeout");
    }

    fn refused(&self, peer: SocketAddr, why: Refused) {
        self.s.connection_refused(self.role, peer, why);
    }

    async fn serve(&self, conn: Self::Ready, _: SocketAddr) {
        let s = self.s.clone();
        match (
            self.role,
            peer_identity(&s, tls::quic_peer_cert(&conn).as_deref()),
        ) {
            (_, Err(reason)) => {
                warn!(
                    reason = reason.code(),
                    "Peer certificate refused after the handshake"
                );
                s.auth_failure(reason.code());
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
}

/// TLS session-ticket keys from `[tls] resumption_keys`, so agents and
/// laptops resume after a restart. A key file that exists but is unusable
/// (readable by others, not a key file) stops the start; one that cannot be
/// created at the default place only costs resumption across restarts.
pub(crate) fn resumption_tickets(
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
pub(crate) fn peer_identity(
    s: &Shared,
    der: Option<&[u8]>,
) -> Result<(Identity, PeerCert), Reason> {
    let der = der.ok_or(Reason::CertRejected)?;
    let cert = PeerCertFacts::from_der(der).map_err(|_| Reason::CertRejected)?;
    check_cert(s, &cert)?;
    let id = kakehashi_pki::identity_from_der(der).map_err(|_| Reason::WrongCertificateKind)?;
    Ok((id, Arc::new(cert)))
}

/// A bounded label for why a TLS-over-TCP handshake failed.
pub(crate) fn handshake_failure(e: &std::io::Error) -> &'static str {
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
pub(crate) fn quic_handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            if (0x100..0x200).contains(&code) {
                kakehashi_transport::explain::alert_reason(u8::try_from(code - 0x100).unwrap_or(0))
                    .code()
            } else {
                "quic_error"
            }
        }
        quinn::ConnectionError::TimedOut => "handshake_timeout",
        _ => "quic_error",
    }
}

/// notAfter of a certificate as unix seconds.
pub(crate) fn not_after(der: &[u8]) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.validity().not_after.timestamp())
}
