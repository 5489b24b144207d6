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
//! On Windows the agent also sets the RDP host's own redirection policy for
//! each session and restores it afterwards ([`windows_policy`]).

pub mod config;
pub mod rdp;
pub mod windows_policy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use kakehashi_pki::Identity;
use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, FilterReport, Message, OpenDataChannel,
};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal, ReplayGuard, TicketVerifier, ALPN_AGENT};
use kakehashi_transport::backoff::Reconnect;
use kakehashi_transport::dial::{quic_connect, resolve, tls_connect};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::splice::splice;
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::tls::{self, TlsFiles};
use kakehashi_transport::{explain, unix_now, BoxIo, TransportChoice};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

pub use config::Config;

use config::GatewayTarget;

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
/// How long one write of a filter report on the control stream may take.
const REPORT_WRITE: Duration = Duration::from_secs(5);

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
        }
    }

    /// Keep a tunnel to every gateway until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks = JoinSet::new();
        for gw in self.cfg.gateways.clone() {
            let span = info_span!("gateway", desk = %self.desk, gateway = %gw.tcp);
            tasks.spawn(self.clone().gateway_loop(gw, stop.clone()).instrument(span));
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn gateway_loop(self: Arc<Self>, gw: GatewayTarget, stop: CancellationToken) {
        let mut backoff = Reconnect::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.clone().connect_and_serve(&gw, &stop) => r,
                _ = stop.cancelled() => return,
            };
            if stop.is_cancelled() {
                return;
            }
            match result {
                Ok(()) => info!("Tunnel closed"),
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
            let delay = backoff.next_delay();
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
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        match gw.transport {
            TransportChoice::Quic => {
                let t = self.cfg.handshake_timeout;
                self.serve_quic(gw, t, stop).await.map_err(unwrap_was_up)
            }
            TransportChoice::Tcp => self.serve_tcp(gw, stop).await,
            TransportChoice::Auto => match self.clone().serve_quic(gw, QUIC_PROBE, stop).await {
                Err(e) if !is_tls_refusal(&e) && !e.is::<TunnelWasUp>() => {
                    debug!(error = %format!("{e:#}"), "QUIC unavailable; trying TCP");
                    self.serve_tcp(gw, stop).await
                }
                other => other.map_err(unwrap_was_up),
            },
        }
    }

    async fn serve_quic(
        self: Arc<Self>,
        gw: &GatewayTarget,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = resolve(&gw.quic).await?;
        let limits = QuicLimits {
            // The gateway opens one stream per session on this tunnel.
            max_streams: self.cfg.quic_session_streams,
            ..QuicLimits::default()
        };
        let ep = kakehashi_transport::quic::client((*self.tls.config()?).clone(), limits, addr)?;
        let conn = quic_connect(&ep, addr, &gw.server_name, timeout).await?;
        let hello = async {
            let mut ctl = QuicStream::new(conn.open_bi().await?);
            write_message(&mut ctl, &self.hello()).await?;
            let f = read_frame(&mut ctl).await?;
            if f.kind == FrameKind::Refused {
                let r = Refusal::from_frame(&f)?;
                bail!("gateway refused the tunnel: {r}");
            }
            anyhow::Ok((ctl, AgentWelcome::from_frame(&f)?))
        };
        let (mut ctl, welcome) = tokio::time::timeout(self.cfg.handshake_timeout, hello)
            .await
            .map_err(|_| anyhow!("gateway did not welcome the tunnel in time"))?
            .context("tunnel hello failed")?;
        info!(transport = "quic", gateway_name = %welcome.gateway, "Tunnel up");
        let (reports, mut report_rx) = report_queue(&welcome);
        let mut sessions = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                Some(r) = report_rx.recv() => send_report(&mut ctl, &r).await,
                bi = conn.accept_bi() => match bi {
                    Ok(bi) => { sessions.spawn(self.clone().handle_session(Box::new(QuicStream::new(bi)), reports.clone()).in_current_span()); }
                    Err(e) => break Err(TunnelWasUp(anyhow::Error::new(e).context("QUIC tunnel lost")).into()),
                },
            }
        };
        let _ = ctl.shutdown().await;
        conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
        sessions.detach_all();
        result
    }

    async fn serve_tcp(
        self: Arc<Self>,
        gw: &GatewayTarget,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let keepalive = Duration::from_secs(10);
        let mut ctl = tls_connect(
            &gw.tcp,
            &gw.server_name,
            self.tls.config()?,
            self.cfg.handshake_timeout,
            keepalive,
        )
        .await?;
        write_message(&mut ctl, &self.hello()).await?;
        let f = tokio::time::timeout(self.cfg.handshake_timeout, read_frame(&mut ctl))
            .await
            .map_err(|_| anyhow!("gateway did not welcome the tunnel in time"))??;
        if f.kind == FrameKind::Refused {
            bail!("gateway refused the tunnel: {}", Refusal::from_frame(&f)?);
        }
        let welcome = AgentWelcome::from_frame(&f)?;
        info!(transport = "tcp", gateway_name = %welcome.gateway, "Tunnel up");
        let (reports, mut report_rx) = report_queue(&welcome);
        // The gateway pings every `ping_interval_secs`; three missed pings mean the tunnel is dead.
        let silence = Duration::from_secs(u64::from(welcome.ping_interval_secs.max(1)) * 3);
        let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
        // Frames are read by their own task: a read cut short by a report write would
        // lose bytes of the frame stream.
        let (mut rd, mut ctl) = tokio::io::split(ctl);
        let (frame_tx, mut frames) = mpsc::channel(8);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut rd).await;
                let end = r.is_err();
                if frame_tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let mut last_frame = tokio::time::Instant::now();
        loop {
            let f = tokio::select! {
                _ = stop.cancelled() => { let _ = ctl.shutdown().await; return Ok(()) }
                Some(r) = report_rx.recv() => { send_report(&mut ctl, &r).await; continue }
                _ = tokio::time::sleep_until(last_frame + silence) => bail!("gateway silent for {silence:?}"),
                r = frames.recv() => match r {
                    None => bail!("TCP tunnel lost"),
                    Some(r) => r.context("TCP tunnel lost")?,
                },
            };
            last_frame = tokio::time::Instant::now();
            match f.kind {
                FrameKind::Ping => write_raw(&mut ctl, &pong).await?,
                FrameKind::OpenDataChannel => {
                    let open = OpenDataChannel::from_frame(&f)?;
                    let me = self.clone();
                    let gw = gw.clone();
                    let reports = reports.clone();
                    tokio::spawn(
                        async move {
                            let config = match me.tls.config() {
                                Ok(c) => c,
                                Err(e) => {
                                    warn!(error = %format!("{e:#}"), "Data channel not opened");
                                    return;
                                }
                            };
                            match tls_connect(
                                &gw.tcp,
                                &gw.server_name,
                                config,
                                me.cfg.handshake_timeout,
                                keepalive,
                            )
                            .await
                            {
                                Ok(mut data) => {
                                    if write_message(
                                        &mut data,
                                        &DataChannelHello {
                                            channel: open.channel,
                                        },
                                    )
                                    .await
                                    .is_ok()
                                    {
                                        me.handle_session(Box::new(data), reports).await;
                                    }
                                }
                                Err(e) => {
                                    warn!(error = %format!("{e:#}"), "Cannot open data connection")
                                }
                            }
                        }
                        .in_current_span(),
                    );
                }
                other => bail!("unexpected {other:?} frame on the tunnel"),
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

/// Marks an error that ended a tunnel after it was established, so `auto`
/// does not treat it as "QUIC unavailable".
#[derive(Debug)]
struct TunnelWasUp(anyhow::Error);

impl std::fmt::Display for TunnelWasUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for TunnelWasUp {}

fn unwrap_was_up(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<TunnelWasUp>() {
        Ok(up) => up.0,
        Err(e) => e,
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

/// Write one report on the control stream; a slow gateway costs the report, not the tunnel.
async fn send_report<W: tokio::io::AsyncWrite + Unpin>(ctl: &mut W, r: &FilterReport) {
    match tokio::time::timeout(REPORT_WRITE, write_message(ctl, r)).await {
        Ok(Ok(())) => debug!(kind = %r.kind, what = %r.what, "Filter report sent"),
        Ok(Err(e)) => warn!(error = %e, "Cannot send a filter report"),
        Err(_) => warn!("Filter report not sent: the gateway is not reading"),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
