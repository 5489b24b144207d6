//! [`Relay`]: binding the laptop and agent listeners, one accept loop per
//! listener with its caps and handshake time-out, and the shutdown order.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kakehashi_pki::Identity;
use kakehashi_proto::{Reason, Refusal, TicketSigner, ALPN_AGENT, ALPN_TERMINAL};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::tls::{self, PeerCertFacts, ReloadingClientVerifier, TlsFiles};
use kakehashi_transport::tls_stream;
use kakehashi_transport::{tune_tcp, BoxIo, Transport};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::metrics::Metrics;

use crate::agents::{handle_agent_quic, handle_agent_tcp};
use crate::crl::{check_cert, watch_crl};
use crate::sessions::{handle_terminal_stream, serve_terminal_quic};
use crate::shared::{refuse, BoundAddrs, EndedSessions, PeerCert, Role, Shared};
use crate::watch::{close_orphaned_sessions, watch_changes};

/// The relay with its listeners bound, ready to serve.
pub struct Relay {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addrs: BoundAddrs,
    pub(crate) terminal_quic: Option<quinn::Endpoint>,
    pub(crate) terminal_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    pub(crate) agent_quic: Option<quinn::Endpoint>,
    pub(crate) agent_tcp: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
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

pub(crate) async fn tcp_accept_loop(
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
pub(crate) async fn tcp_handshake(
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

pub(crate) async fn quic_accept_loop(
    s: Arc<Shared>,
    ep: quinn::Endpoint,
    cap: Arc<Semaphore>,
    role: Role,
) {
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

/// Wait for connection tasks after the listener stops; the force token ends them.
pub(crate) async fn drain(mut conns: JoinSet<()>, s: &Shared) {
    tokio::select! {
        _ = async { while conns.join_next().await.is_some() {} } => {}
        _ = s.force.cancelled() => conns.abort_all(),
    }
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
