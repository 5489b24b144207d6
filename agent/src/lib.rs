//! Kakehashi desk agent. Runs on the desk PC, opens no listening port:
//! it dials out to every configured gateway and keeps each tunnel up with
//! capped, jittered backoff. For each session the gateway opens, it checks
//! the signed ticket (signature, validity, desk id, single use) and only
//! then connects the stream to the desk's local service.
//!
//! With an `[rdp]` section, sessions whose ticket restricts anything go
//! through the RDP channel filter ([`rdp`]): the agent terminates the RDP
//! client's TLS with the RDP server's own certificate and key, connects to the
//! server pinned to that certificate, and enforces the ticket's controls in
//! the decrypted stream. Every blocked attempt is reported to the gateway on
//! the tunnel's control stream ([`FilterReport`]). `[rdp]` is required; with
//! `enforce = false` (the explicit pass-through switch, for a desk that is not
//! an RDP server) sessions pass through uninspected, and the agent's hello
//! tells the gateway it does not enforce, so the gateway refuses sessions whose
//! controls restrict anything unless the desk is registered as non-RDP.
//!
//! The configured gateways are the bootstrap: each gateway sends the
//! cluster's signed member list over the tunnel, and the agent dials every
//! live member it does not reach yet and drops the members that left
//! ([`members`]). A gateway stopping on purpose says `restarting`: the
//! agent closes that tunnel once its sessions are over and waits before
//! dialling it again.
//!
//! On Windows the agent also sets the RDP host's own redirection policy for
//! each session and restores it afterwards ([`windows_policy`]).

#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

pub mod config;
pub mod members;
pub mod rdp;
pub mod windows_policy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use kakehashi_pki::Identity;
use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{AgentHello, AgentWelcome, FilterReport, Message};
use kakehashi_proto::{
    frame, Frame, FrameKind, Reason, Refusal, ReplayGuard, TicketVerifier, ALPN_AGENT,
};
use kakehashi_transport::backoff::Reconnect;
use kakehashi_transport::dial::{quic_connect, resolve, tls_connect};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::splice::splice;
use kakehashi_transport::tls::{self, TlsFiles};
use kakehashi_transport::tunnel::{AgentEvent, DataDialer, Tunnel};
use kakehashi_transport::{explain, unix_now, BoxIo, TransportChoice};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

pub use config::Config;

use config::GatewayTarget;
use members::{Event, Fleet, Origin};

/// A tunnel that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long `auto` waits for QUIC before trying TCP.
const QUIC_PROBE: Duration = Duration::from_millis(1500);
/// Most tickets remembered for replay protection.
const REPLAY_CAPACITY: usize = 100_000;
/// Filter reports queued per tunnel before new ones are dropped.
const REPORT_QUEUE: usize = 256;
/// How long a filtered session may wait for the RDP client's first bytes (a
/// session opened ahead by `kakehashi connect --launch` waits for the RDP client
/// to start).
const RDP_FIRST_BYTES: Duration = Duration::from_secs(60);
/// TCP keepalive of the tunnel's connections: a quiet connection (a
/// session's data connection carries no pings) to a gateway host that is
/// gone is dropped by the kernel within 4 s.
const TCP_KEEPALIVE: Duration = kakehashi_transport::KEEPALIVE;

/// QUIC keepalive of the tunnel: how long at most before the agent learns
/// that its gateway was killed (SIGKILL, a power loss) and started again.
/// A dead gateway sends no close; the restarted one answers the agent's
/// next packet with a stateless reset the agent recognises
/// (`kakehashi_transport::quic::ResetKey`), and the agent dials again at
/// once instead of waiting out the idle timeout. The transport's keep-alive
/// (1 s), which also finds a hung gateway within the idle timeout.
/// The gateway pings too (every `[relay.limits] keepalive`); see
/// `restart::an_idle_quic_tunnel_stays_up` before changing either side.
const QUIC_KEEPALIVE: Duration = kakehashi_transport::KEEPALIVE;
/// How long the agent leaves a gateway that said `restarting` alone before
/// dialling it again (plus the moment it draws in the notice's return
/// window, [`restart_pause`], and the usual jittered backoff).
pub const RESTART_PAUSE: Duration = Duration::from_secs(5);

/// How long to leave a gateway that said `restarting`, its notice asking
/// for the return to be spread over `within`: the fixed pause, then a
/// moment drawn uniformly in the window, so that a gateway's thousands of
/// agents do not all dial it again in the same instant.
pub fn restart_pause(within: Duration) -> Duration {
    RESTART_PAUSE + kakehashi_transport::backoff::spread(within)
}

/// Tunnel events queued for the run loop (member lists, welcomes).
const EVENT_QUEUE: usize = 64;

/// Where tunnels send what the run loop must know.
type Events = mpsc::Sender<Event>;

/// How a tunnel ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The agent is stopping, or this gateway left the member list.
    Stopped,
    /// The gateway said `restarting`, and no session was left on it; come
    /// back within this window after the pause.
    Restarting(Duration),
}

/// The next change of a learned member's drain flag; never, for a
/// configured gateway.
async fn drain_changed(
    drain: &mut Option<watch::Receiver<bool>>,
) -> Result<(), watch::error::RecvError> {
    match drain {
        Some(d) => d.changed().await,
        None => std::future::pending().await,
    }
}

/// Where a session's filter reports go: the tunnel's control stream, when the
/// gateway accepts them.
type Reports = Option<mpsc::Sender<FilterReport>>;

/// A configured agent.
#[derive(Debug)]
pub struct Agent {
    desk: String,
    cfg: Arc<Config>,
    tls: tls::ClientTls,
    verifier: TicketVerifier,
    replay: Mutex<ReplayGuard>,
    /// Version of the last member list accepted: an older one is a replay.
    list_version: Mutex<Option<u64>>,
    rdp: Option<rdp::RdpTls>,
    /// The RDP host's redirection policy (Windows only; a no-op elsewhere).
    desk_policy: windows_policy::DeskPolicy,
}

impl Agent {
    /// Load certificates and keys; the desk id comes from the agent certificate.
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Self>> {
        let files = TlsFiles {
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            crl: cfg.crl.clone(),
        };
        kakehashi_transport::keyfile::check_key_file(&cfg.key)?;
        let m = files.load()?;
        let desk = match kakehashi_pki::identity_from_der(&m.chain[0])
            .context("cannot read the agent certificate")?
        {
            Identity::Agent { desk } => desk,
            other => bail!(
                "{} is a {} certificate, not an agent certificate",
                cfg.cert.display(),
                other.kind()
            ),
        };
        let tls = tls::ClientTls::new(m, cfg.crl.clone(), ALPN_AGENT, cfg.crl_grace)?;
        let rdp = cfg.rdp.as_ref().map(rdp::RdpTls::new).transpose()?;
        if rdp.is_none() {
            warn!(
                desk = %desk,
                "RDP filter off ([rdp] enforce = false): sessions pass through uninspected; the gateway is told, and admits only sessions that restrict nothing or to a desk registered as non-RDP"
            );
        }
        Ok(Arc::new(Self {
            desk,
            verifier: TicketVerifier::new(cfg.ticket_keys.clone()),
            replay: Mutex::new(ReplayGuard::new(REPLAY_CAPACITY)),
            list_version: Mutex::new(None),
            rdp,
            tls,
            cfg: Arc::new(cfg),
            desk_policy: windows_policy::DeskPolicy::for_this_desk(),
        }))
    }

    /// The desk this agent serves.
    pub fn desk(&self) -> &str {
        &self.desk
    }

    /// The hello that opens every tunnel: says whether this agent enforces
    /// session controls (its RDP filter is on).
    fn hello(&self) -> AgentHello {
        AgentHello {
            software: software(),
            enforces: self.rdp.is_some(),
            members: true,
        }
    }

    /// Keep a tunnel to every configured gateway, and to every member of
    /// the cluster's member list, until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let (events, mut rx) = mpsc::channel(EVENT_QUEUE);
        let mut tasks = JoinSet::new();
        for (i, gw) in self.cfg.gateways.clone().into_iter().enumerate() {
            let span = info_span!("gateway", desk = %self.desk, gateway = %gw.tcp);
            let lp = self.clone().gateway_loop(
                gw,
                Origin::Configured(i),
                Duration::ZERO,
                stop.clone(),
                None,
                events.clone(),
            );
            tasks.spawn(lp.instrument(span));
        }
        let mut fleet = Fleet::new(&self.cfg.gateways);
        // Spreads the first dial of each new member (0.5-1 s), on top of the
        // spacing between new dials (members::DIAL_SPACING).
        let mut jitter = Reconnect::new(Duration::from_secs(1), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(ev) = rx.recv() => {
                    for st in fleet.apply(ev, Instant::now(), jitter.next_delay(), &stop) {
                        let span = info_span!("gateway", desk = %self.desk, gateway = %st.target.tcp, member = %st.id);
                        let ended = st.ended;
                        let lp = self.clone().gateway_loop(
                            st.target,
                            Origin::Learned(st.id),
                            st.delay,
                            st.stop,
                            Some(st.drain),
                            events.clone(),
                        );
                        let lp = async move {
                            lp.await;
                            ended.store(true, std::sync::atomic::Ordering::SeqCst);
                        };
                        tasks.spawn(lp.instrument(span));
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One gateway's tunnel, dialled again after each loss with jittered
    /// backoff, until `stop` (the agent stops, or a learned member's
    /// addresses changed), or, for a learned member out of the member list
    /// (`drain` true), until its tunnel carries no session.
    async fn gateway_loop(
        self: Arc<Self>,
        gw: GatewayTarget,
        origin: Origin,
        first_delay: Duration,
        stop: CancellationToken,
        mut drain: Option<watch::Receiver<bool>>,
        events: Events,
    ) {
        let draining = |d: &Option<watch::Receiver<bool>>| d.as_ref().is_some_and(|d| *d.borrow());
        if !first_delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(first_delay) => {}
                _ = stop.cancelled() => return,
            }
        }
        let mut backoff = Reconnect::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        loop {
            if draining(&drain) {
                return;
            }
            let started = Instant::now();
            let result = tokio::select! {
                r = self.clone().connect_and_serve(&gw, &origin, &events, &stop, &mut drain) => r,
                _ = stop.cancelled() => return,
            };
            if stop.is_cancelled() || draining(&drain) {
                return;
            }
            let mut pause = Duration::ZERO;
            match result {
                Ok(Ended::Stopped) => info!("Tunnel closed"),
                Ok(Ended::Restarting(within)) => {
                    pause = restart_pause(within);
                    info!(
                        pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        return_within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
                        "Tunnel closed: the gateway is restarting; the other gateways carry the sessions"
                    );
                }
                Err(e) => {
                    let why = explain::chain_reason(&e)
                        .map(|r| r.code())
                        .unwrap_or("connection");
                    warn!(reason = why, error = %format!("{e:#}"), "Tunnel down");
                }
            }
            if started.elapsed() > STABLE_AFTER {
                backoff.reset();
            }
            // Jittered (transport::backoff), so a reconnect storm spreads out.
            let delay = pause + backoff.next_delay();
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            debug!(delay_ms, "Reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn connect_and_serve(
        self: Arc<Self>,
        gw: &GatewayTarget,
        origin: &Origin,
        events: &Events,
        stop: &CancellationToken,
        drain: &mut Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<Ended> {
        let tunnel = match gw.transport {
            TransportChoice::Quic => self.dial_quic(gw, self.cfg.handshake_timeout).await?,
            TransportChoice::Tcp => Tunnel::from_tcp(self.dial_tcp(gw).await?),
            TransportChoice::Auto => match self.dial_quic(gw, QUIC_PROBE).await {
                Ok(t) => t,
                Err(e) if !is_tls_refusal(&e) => {
                    debug!(error = %format!("{e:#}"), "QUIC unavailable; trying TCP");
                    Tunnel::from_tcp(self.dial_tcp(gw).await?)
                }
                Err(e) => return Err(e),
            },
        };
        self.serve_tunnel(tunnel, gw, origin, events, stop, drain)
            .await
    }

    /// Dial the gateway on QUIC, within `timeout`, as a tunnel.
    async fn dial_quic(&self, gw: &GatewayTarget, timeout: Duration) -> anyhow::Result<Tunnel> {
        let addr = resolve(&gw.quic).await?;
        let limits = QuicLimits {
            // The gateway opens one stream per session on this tunnel.
            max_streams: self.cfg.quic_session_streams,
            keepalive: QUIC_KEEPALIVE,
            ..QuicLimits::default()
        };
        let ep = kakehashi_transport::quic::client((*self.tls.config()?).clone(), limits, addr)?;
        let conn = quic_connect(&ep, addr, &gw.server_name, timeout).await?;
        Ok(Tunnel::open_quic(conn).await?)
    }

    /// Dial the gateway on TLS over TCP (the tunnel, or one session's data connection).
    async fn dial_tcp(&self, gw: &GatewayTarget) -> anyhow::Result<BoxIo> {
        let io = tls_connect(
            &gw.tcp,
            &gw.server_name,
            self.tls.config()?,
            self.cfg.handshake_timeout,
            TCP_KEEPALIVE,
        )
        .await?;
        Ok(Box::new(io))
    }

    /// One tunnel, on either transport: hello, welcome, then the sessions
    /// the gateway opens, until the tunnel is lost or `stop`. Only a failed
    /// dial makes `auto` try TCP; a tunnel that fails later is dialled again.
    async fn serve_tunnel(
        self: Arc<Self>,
        mut tunnel: Tunnel,
        gw: &GatewayTarget,
        origin: &Origin,
        events: &Events,
        stop: &CancellationToken,
        drain: &mut Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<Ended> {
        let transport = tunnel.transport();
        let hello = async {
            write_message(tunnel.control(), &self.hello()).await?;
            let f = read_frame(tunnel.control()).await?;
            if f.kind == FrameKind::Refused {
                let r = Refusal::from_frame(&f)?;
                bail!("gateway refused the tunnel: {r}");
            }
            anyhow::Ok(AgentWelcome::from_frame(&f)?)
        };
        let welcome = tokio::time::timeout(self.cfg.handshake_timeout, hello)
            .await
            .map_err(|_| anyhow!("gateway did not welcome the tunnel in time"))?
            .context("tunnel hello failed")?;
        info!(%transport, gateway_name = %welcome.gateway, "Tunnel up");
        let _ = events.try_send(Event::Welcomed {
            origin: origin.clone(),
            id: welcome.gateway.clone(),
        });
        let (reports, mut report_rx) = report_queue(&welcome);
        // The gateway pings a TCP tunnel every `ping_interval_secs`; three
        // missed pings mean the tunnel is dead.
        let silence = Duration::from_secs(u64::from(welcome.ping_interval_secs.max(1)) * 3);
        let dial: DataDialer = {
            let (me, gw) = (self.clone(), gw.clone());
            Arc::new(move || {
                let (me, gw) = (me.clone(), gw.clone());
                Box::pin(async move { me.dial_tcp(&gw).await })
            })
        };
        let mut control = tunnel.into_agent(silence, dial);
        let mut sessions = JoinSet::new();
        // The gateway said `restarting`: it opens no new sessions; the tunnel
        // closes once the ones it carries are over.
        let mut leaving: Option<Duration> = None;
        let draining = |d: &Option<watch::Receiver<bool>>| d.as_ref().is_some_and(|d| *d.borrow());
        if draining(drain) && sessions.is_empty() {
            return Ok(Ended::Stopped);
        }
        let result = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(Ended::Stopped),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {
                    if let (Some(within), true) = (leaving, sessions.is_empty()) {
                        break Ok(Ended::Restarting(within));
                    }
                    if draining(drain) && sessions.is_empty() {
                        info!("Tunnel closed: the gateway left the member list and no session is left on it");
                        break Ok(Ended::Stopped);
                    }
                }
                changed = drain_changed(drain) => {
                    if changed.is_err() {
                        // The fleet forgot this member: as if drained.
                        *drain = None;
                        break Ok(Ended::Stopped);
                    }
                    if draining(drain) {
                        if sessions.is_empty() {
                            break Ok(Ended::Stopped);
                        }
                        info!(sessions = sessions.len(), "The gateway left the member list: closing the tunnel once its sessions end");
                    }
                }
                Some(r) = report_rx.recv() => match control.send(&r) {
                    Ok(()) => debug!(kind = %r.kind, what = %r.what, "Filter report sent"),
                    Err(_) => warn!("Filter report not sent: the gateway is not reading"),
                },
                ev = control.next() => match ev {
                    Ok(AgentEvent::Session(io)) => { sessions.spawn(self.clone().handle_session(io, reports.clone()).in_current_span()); }
                    Ok(AgentEvent::Control(f)) => {
                        if let (Some(within), None) = (self.on_control_frame(f, events), leaving) {
                            leaving = Some(within);
                            if sessions.is_empty() {
                                break Ok(Ended::Restarting(within));
                            }
                            info!(sessions = sessions.len(), "The gateway is restarting: closing the tunnel once its sessions end");
                        }
                    }
                    Err(e) => break Err(anyhow::Error::new(e).context(format!("{transport} tunnel lost"))),
                },
            }
        };
        control.close(b"agent stopping");
        sessions.detach_all();
        result
    }

    /// A frame the gateway sent on the control stream: a member list
    /// (verified, then handed to the run loop) or a notice. When the gateway
    /// said it is restarting, returns the window its notice gives for the
    /// return.
    fn on_control_frame(&self, f: Frame, events: &Events) -> Option<Duration> {
        match f.kind {
            FrameKind::MemberList => {
                let checked = {
                    let mut last = self.list_version.lock().expect("list version lock");
                    let r = kakehashi_proto::members::verify(
                        &self.verifier,
                        &f.payload,
                        unix_now(),
                        *last,
                    );
                    if let Ok(l) = &r {
                        *last = Some(l.version);
                    }
                    r
                };
                match checked {
                    Ok(list) => {
                        debug!(version = list.version, members = list.members.len(), signer = %list.gateway, "Member list accepted");
                        if events.try_send(Event::List(list)).is_err() {
                            warn!("Member list dropped: the agent is busy");
                        }
                    }
                    // Lists from several gateways cross: an older one is ignored.
                    Err(e @ kakehashi_proto::members::MemberListError::Stale { .. }) => {
                        debug!(error = %e, "Older member list ignored")
                    }
                    Err(e) => warn!(reason = e.code(), error = %e, "Member list refused"),
                }
                None
            }
            FrameKind::Refused => match Refusal::from_frame(&f) {
                Ok(r) => {
                    let notice = r.restart_notice();
                    if notice.is_none() {
                        warn!(reason = %r.code, "Notice from the gateway ignored");
                    }
                    notice
                }
                Err(e) => {
                    warn!(error = %e, "Bad notice from the gateway ignored");
                    None
                }
            },
            other => {
                warn!(kind = ?other, "Unexpected control frame ignored");
                None
            }
        }
    }

    /// One session stream from the gateway: ticket first, then the desk.
    async fn handle_session(self: Arc<Self>, mut io: BoxIo, reports: Reports) {
        let f = match tokio::time::timeout(self.cfg.handshake_timeout, read_frame(&mut io)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                warn!(error = %e, "Bad frame instead of a ticket");
                return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
            }
            Err(_) => return refuse(&mut io, Refusal::new(Reason::Timeout)).await,
        };
        if f.kind != FrameKind::Ticket {
            warn!(kind = ?f.kind, "Session stream did not start with a ticket");
            return refuse(&mut io, Refusal::new(Reason::ProtocolError)).await;
        }
        let now = unix_now();
        let checked = self
            .verifier
            .verify(&f.payload, &self.desk, now)
            .and_then(|claims| {
                self.replay
                    .lock()
                    .expect("replay lock")
                    .check_and_record(&claims, now)?;
                Ok(claims)
            });
        let claims = match checked {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, reason = e.reason().code(), "Ticket refused");
                return refuse(&mut io, Refusal::new(e.reason())).await;
            }
        };
        let span = info_span!("session", session = %claims.session_id, device = %claims.device, user = ?claims.user);
        async move {
            // Before the RDP server sees the connection; undone when this drops.
            let _desk_policy = self.desk_policy.session(claims.controls);
            let target = match tokio::time::timeout(
                self.cfg.target_timeout,
                TcpStream::connect(&self.cfg.target),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    warn!(target = %self.cfg.target, error = %e, "Desk service unreachable");
                    return refuse(&mut io, Refusal::new(Reason::TargetUnreachable)).await;
                }
                Err(_) => {
                    warn!(target = %self.cfg.target, "Desk service did not answer in time");
                    return refuse(&mut io, Refusal::new(Reason::TargetUnreachable)).await;
                }
            };
            let _ = target.set_nodelay(true);
            let mut target = target;
            let ok = frame::encode(FrameKind::TicketAccepted, &[]).expect("empty frame");
            if write_raw(&mut io, &ok).await.is_err() {
                return;
            }
            let controls = claims.controls;
            let filtered = match &self.rdp {
                Some(tls) if rdp::needs_filter(controls) => Some(tls),
                Some(_) => None,
                None => {
                    if controls.is_restrictive() {
                        // The gateway admits this only for a desk registered as non-RDP.
                        warn!(?controls, "Session controls NOT enforced: the agent's RDP filter is off ([rdp] enforce = false)");
                    }
                    None
                }
            };
            let Some(tls) = filtered else {
                info!(?controls, filter = false, "Session started");
                match splice(&mut io, &mut target).await {
                    Ok((up, down)) => {
                        info!(bytes_to_desk = up, bytes_from_desk = down, "Session ended")
                    }
                    Err(e) => info!(error = %e, "Session ended by a peer"),
                }
                return;
            };
            info!(?controls, filter = true, "Session started");
            let mut reporter = rdp::Reporter::new(claims.session_id.clone(), reports);
            let timeouts = rdp::Timeouts {
                first_bytes: RDP_FIRST_BYTES,
                step: self.cfg.handshake_timeout,
            };
            let name = rdp_server_name(&self.cfg.target);
            let ended = rdp::serve(io, target, name, controls, tls, timeouts, &mut reporter).await;
            reporter.finish();
            match ended {
                rdp::Ended::Closed { up, down } => {
                    info!(bytes_to_desk = up, bytes_from_desk = down, blocked = reporter.blocked, "Session ended")
                }
                rdp::Ended::ServerRefused => info!("Session ended: the RDP server refused the client's security negotiation"),
                rdp::Ended::Refused(e) => {
                    warn!(reason = e.reason_code(), error = %e, "Session refused by the RDP filter")
                }
                rdp::Ended::ServerKeyMismatch(e) => warn!(
                    target = %self.cfg.target,
                    error = %e,
                    "Session refused: the RDP server's certificate is not the one in [rdp] server_cert; nothing was forwarded"
                ),
                rdp::Ended::Failed(e) => info!(error = %format!("{e:#}"), "Session ended by a peer"),
            }
        }
        .instrument(span)
        .await
    }
}

fn is_tls_refusal(e: &anyhow::Error) -> bool {
    explain::chain_reason(e).is_some_and(|r| r != Reason::GatewayUnreachable)
}

/// The name the agent gives the RDP server in its TLS handshake (unchecked: the
/// server is pinned by certificate; SNI is off).
fn rdp_server_name(target: &str) -> rustls::pki_types::ServerName<'static> {
    let host = config::host_of(target);
    rustls::pki_types::ServerName::try_from(host)
        .unwrap_or_else(|_| rustls::pki_types::ServerName::from(std::net::Ipv4Addr::LOCALHOST))
}

/// The report queue of a tunnel, open only when the gateway accepts reports.
fn report_queue(welcome: &AgentWelcome) -> (Reports, mpsc::Receiver<FilterReport>) {
    let (tx, rx) = mpsc::channel(REPORT_QUEUE);
    (welcome.filter_reports.then_some(tx), rx)
}

fn software() -> String {
    format!("kakehashi-agent/{}", env!("CARGO_PKG_VERSION"))
}

async fn refuse(io: &mut BoxIo, r: Refusal) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = write_message(io, &r).await;
        let _ = io.shutdown().await;
    })
    .await;
}
