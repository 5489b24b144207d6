//! Many agents and laptops in one process, speaking the real protocol with
//! `kakehashi_transport` and `kakehashi_proto`: an agent dials the gateway
//! with its own desk certificate, says hello, checks every ticket the gateway
//! signs (signature, desk, expiry, single use) and then plays the desk; a
//! laptop opens sessions with a device certificate and a `SessionRequest`.
//!
//! QUIC connections share a few client endpoints (one UDP socket per few
//! hundred connections), so 40,000 connections do not need 40,000 sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, Message, OpenDataChannel, Secret, SessionAccepted,
    SessionRequest,
};
use kakehashi_proto::{
    frame, FrameKind, Refusal, ReplayGuard, TicketVerifier, ALPN_AGENT, ALPN_TERMINAL,
};
use kakehashi_transport::backoff::Reconnect;
use kakehashi_transport::dial::{quic_handshake, tls_connect};
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::tls::{self, TlsMaterial};
use kakehashi_transport::{unix_now, BoxIo};
use quinn::TransportConfig;
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use crate::stats::Errors;
use crate::traffic::{self, DeskMode, Flow};

/// Handshake and setup timeout of the simulated peers.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The real agent's and laptop's keep-alive (QUIC and TCP).
const KEEPALIVE: Duration = kakehashi_transport::KEEPALIVE;

/// Which transport the fleet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC on both legs.
    Quic,
    /// TLS over TCP on both legs.
    Tcp,
}

/// The QUIC transport settings of the real agent and client
/// (`kakehashi_transport::quic::QuicLimits`), with the stream limit the
/// peer may open: [`kakehashi_transport::quic::AGENT_SESSION_STREAMS`] for an
/// agent, 0 for a laptop.
pub fn quic_transport(max_streams: u32) -> Arc<TransportConfig> {
    kakehashi_transport::quic::QuicLimits {
        max_streams,
        keepalive: KEEPALIVE,
        ..Default::default()
    }
    .transport()
}

/// Session streams a simulated agent lets the gateway open: twice the
/// sessions a desk carries in this run, at least 16. The real agent allows
/// [`kakehashi_transport::quic::AGENT_SESSION_STREAMS`] (4,096); quinn sets up
/// every allowed stream when a connection starts, which costs a desk PC a
/// fraction of a millisecond per dial but cost the load generator, dialling
/// for 20,000 agents on the gateway's own two cores, most of its CPU in a
/// reconnect storm. The gateway's side of a tunnel does not depend on it.
pub fn agent_streams(sessions: usize, agents: usize) -> u32 {
    let per_desk = sessions.div_ceil(agents.max(1));
    u32::try_from(per_desk.saturating_mul(2).max(16))
        .unwrap_or(u32::MAX)
        .min(kakehashi_transport::quic::AGENT_SESSION_STREAMS)
}

/// A quinn client config for `tls`.
pub fn quic_client(
    tls: rustls::ClientConfig,
    transport: Arc<TransportConfig>,
) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("TLS config unusable for QUIC")?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport);
    Ok(c)
}

/// The name the gateway's certificate carries, which agents and laptops
/// check: `localhost` for a gateway this process starts, the remote
/// gateway's name otherwise ([`set_remote`]).
pub fn server_name() -> &'static str {
    REMOTE.get().map_or("localhost", |r| r.as_str())
}

static REMOTE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Dial a gateway on another machine, named `name` in its certificate: the
/// fleet's UDP sockets bind every address instead of loopback. Once per process.
pub fn set_remote(name: &str) {
    let _ = REMOTE.set(name.to_string());
}

/// `n` client endpoints on loopback (every address for a remote gateway), each with 4 MiB socket buffers (the
/// kernel caps them at `net.core.rmem_max`/`wmem_max`) so that drops, if
/// any, happen on the gateway's side rather than the load generator's.
pub fn endpoints(n: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..n.max(1))
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
            let ip = if REMOTE.get().is_some() {
                [0, 0, 0, 0]
            } else {
                [127, 0, 0, 1]
            };
            s.bind(&SocketAddr::from((ip, 0)).into())?;
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                s.into(),
                Arc::new(quinn::TokioRuntime),
            )
            .context("cannot open a UDP socket")
        })
        .collect()
}

/// Datagrams dropped by the UDP socket bound to `port` on 127.0.0.1
/// (the `drops` column of `/proc/net/udp`).
pub fn udp_socket_drops(port: u16) -> u64 {
    let s = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    s.lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// UDP receive-buffer drops on this machine so far (`RcvbufErrors` in `/proc/net/snmp`).
pub fn udp_rcvbuf_errors() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Shared state and figures of a fleet.
#[derive(Debug)]
pub struct Ctx {
    /// What desks do with sessions.
    pub desk_mode: DeskMode,
    /// Checks the gateway's tickets.
    pub verifier: TicketVerifier,
    /// Errors by kind.
    pub errors: Errors,
    /// Agents with a live tunnel.
    pub agents_up: AtomicUsize,
    /// Tunnels established (welcomes received), including reconnections.
    pub welcomes: AtomicU64,
    /// `traffic::now_us()` of the latest welcome.
    pub last_welcome_us: AtomicU64,
    /// When the first agent was welcomed since this was last set to
    /// `u64::MAX` (P7: when the new gateway was serving).
    pub first_welcome_us: AtomicU64,
    /// Tickets accepted by the simulated agents.
    pub tickets_ok: AtomicU64,
    /// Sessions open on the laptop side.
    pub sessions_up: AtomicUsize,
    /// Laptop-side traffic counters.
    pub flow: Flow,
    /// Reconnect backoff: first delay.
    pub backoff_initial: Duration,
    /// Reconnect backoff: cap.
    pub backoff_max: Duration,
    /// Tunnels an agent dropped on purpose to dial again (the soak).
    pub redials: AtomicU64,
    /// `restarting` notices the agents heard from their gateway.
    pub restart_notices: AtomicU64,
}

impl Ctx {
    /// A context for desks in `mode`, trusting the ticket key `ticket_pub`.
    pub fn new(desk_mode: DeskMode, ticket_pub: [u8; 32]) -> Arc<Self> {
        Arc::new(Self {
            desk_mode,
            verifier: TicketVerifier::new(vec![ticket_pub]),
            errors: Errors::default(),
            agents_up: AtomicUsize::new(0),
            welcomes: AtomicU64::new(0),
            last_welcome_us: AtomicU64::new(0),
            first_welcome_us: AtomicU64::new(u64::MAX),
            tickets_ok: AtomicU64::new(0),
            sessions_up: AtomicUsize::new(0),
            flow: Flow::default(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            redials: AtomicU64::new(0),
            restart_notices: AtomicU64::new(0),
        })
    }
}

/// Where the agents dial (changeable for a gateway restart on the same ports).
#[derive(Debug, Clone, Copy)]
pub struct AgentTarget {
    /// Agent QUIC listener.
    pub quic: SocketAddr,
    /// Agent TCP listener.
    pub tcp: SocketAddr,
}

/// How a simulated agent's tunnel ended without a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Dropped on purpose to dial again (the soak's redials).
    Redial,
    /// The gateway said `restarting` (or `shutting_down`), to come back
    /// within this window after the pause.
    Restarting(Duration),
}

/// The return window of the gateway's `restarting` notice, when a
/// control-stream frame is one.
fn restart_notice(f: &kakehashi_proto::Frame) -> Option<Duration> {
    if f.kind != FrameKind::Refused {
        return None;
    }
    Refusal::from_frame(f).ok()?.restart_notice()
}

/// One simulated desk agent.
pub struct Agent {
    desk: String,
    tls: Arc<rustls::ClientConfig>,
    quic: Option<(quinn::Endpoint, quinn::ClientConfig)>,
    replay: Mutex<ReplayGuard>,
    /// Drop the tunnel and dial again after a random 0.5–1.5 × this.
    redial_every: Option<Duration>,
    /// Whether the tunnel is up (welcomed and not yet lost).
    up: AtomicBool,
    /// Tunnels this agent dropped on purpose so far.
    redials: AtomicU64,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("desk", &self.desk)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent for `desk` with certificate `m`; QUIC agents use endpoint `ep`.
    pub fn new(
        desk: String,
        m: &TlsMaterial,
        ep: Option<(quinn::Endpoint, Arc<TransportConfig>)>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::redialing(desk, m, ep, None)
    }

    /// As [`Agent::new`], and when `every` is given the agent drops its
    /// tunnel at a random moment 0.5–1.5 × `every` after each welcome and
    /// dials again through its usual backoff (a desk PC's network blip or
    /// sleep; the soak's periodic reconnects). Sessions on the dropped
    /// tunnel end with it, as they do for a real agent.
    pub fn redialing(
        desk: String,
        m: &TlsMaterial,
        ep: Option<(quinn::Endpoint, Arc<TransportConfig>)>,
        every: Option<Duration>,
    ) -> anyhow::Result<Arc<Self>> {
        let cfg = tls::client_config(m, None, ALPN_AGENT)?;
        let quic = match ep {
            Some((ep, t)) => Some((ep, quic_client(cfg.clone(), t)?)),
            None => None,
        };
        Ok(Arc::new(Self {
            desk,
            tls: Arc::new(cfg),
            quic,
            replay: Mutex::new(ReplayGuard::new(100_000)),
            redial_every: every,
            up: AtomicBool::new(false),
            redials: AtomicU64::new(0),
        }))
    }

    /// The desk this agent serves.
    pub fn desk(&self) -> &str {
        &self.desk
    }

    /// Whether its tunnel is up now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Tunnels it dropped on purpose so far: a session that ends early while
    /// this changed ended with its tunnel, not by a fault.
    pub fn redials(&self) -> u64 {
        self.redials.load(Ordering::Relaxed)
    }

    /// When to drop the next tunnel, if this agent redials.
    fn next_redial(&self) -> Option<tokio::time::Instant> {
        self.redial_every
            .map(|d| tokio::time::Instant::now() + d.mul_f64(0.5 + rand::random::<f64>()))
    }

    /// The tunnel is dropped on purpose now: counted before it closes, so
    /// that its sessions see the count change when they end.
    fn redial(&self, ctx: &Ctx) {
        self.redials.fetch_add(1, Ordering::Relaxed);
        ctx.redials.fetch_add(1, Ordering::Relaxed);
        self.lost(ctx);
    }

    fn lost(&self, ctx: &Ctx) {
        self.up.store(false, Ordering::Relaxed);
        ctx.agents_up.fetch_sub(1, Ordering::Relaxed);
    }

    /// Keep a tunnel up until `stop`, reconnecting with capped, jittered
    /// backoff like the real agent. `up` is told of the first welcome.
    pub async fn run(
        self: Arc<Self>,
        ctx: Arc<Ctx>,
        target: Arc<Mutex<AgentTarget>>,
        stop: CancellationToken,
        up: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut up = up;
        let mut backoff = Reconnect::new(ctx.backoff_initial, ctx.backoff_max);
        loop {
            let t = *target.lock().expect("target");
            let started = Instant::now();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.clone().tunnel(&ctx, t, &mut up) => r,
            };
            if stop.is_cancelled() {
                return;
            }
            // As the real agent: a gateway that said `restarting` is left
            // alone for a while.
            let mut pause = Duration::ZERO;
            match r {
                Err(kind) => ctx.errors.add(kind),
                Ok(Ended::Restarting(within)) => {
                    ctx.restart_notices.fetch_add(1, Ordering::Relaxed);
                    pause = kakehashi_agent::restart_pause(within);
                }
                Ok(Ended::Redial) => {}
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let delay = pause + backoff.next_delay();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn welcomed(&self, ctx: &Ctx, up: &mut Option<tokio::sync::oneshot::Sender<()>>) {
        self.up.store(true, Ordering::Relaxed);
        ctx.agents_up.fetch_add(1, Ordering::Relaxed);
        ctx.welcomes.fetch_add(1, Ordering::Relaxed);
        let now = traffic::now_us();
        ctx.last_welcome_us.fetch_max(now, Ordering::Relaxed);
        ctx.first_welcome_us.fetch_min(now, Ordering::Relaxed);
        if let Some(tx) = up.take() {
            let _ = tx.send(());
        }
    }

    /// One tunnel, until it is lost (`Err`, with the error kind) or dropped
    /// on purpose to redial (`Ok`).
    async fn tunnel(
        self: Arc<Self>,
        ctx: &Arc<Ctx>,
        t: AgentTarget,
        up: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Ended, String> {
        match &self.quic {
            Some((ep, cfg)) => {
                // As the real agent dials (`dial::quic_handshake`).
                let conn = match ep.connect_with(cfg.clone(), t.quic, server_name()) {
                    Ok(c) => quic_handshake(c, t.quic, TIMEOUT)
                        .await
                        .map_err(|e| quic_error_kind("agent", &e))?,
                    Err(_) => return Err("agent:quic_connect".into()),
                };
                let hello = async {
                    let mut ctl = QuicStream::new(conn.open_bi().await?);
                    write_message(
                        &mut ctl,
                        &AgentHello {
                            software: "kakehashi-loadgen".into(),
                            // A simulated desk echoes; it filters nothing.
                            enforces: false,
                            // As the real agent: take the `restarting` notice (a
                            // simulated desk dials one gateway only and ignores
                            // member lists).
                            members: true,
                        },
                    )
                    .await?;
                    let f = read_frame(&mut ctl).await?;
                    AgentWelcome::from_frame(&f)?;
                    anyhow::Ok(ctl)
                };
                let mut ctl = match tokio::time::timeout(TIMEOUT, hello).await {
                    Ok(Ok(c)) => c,
                    _ => return Err("agent:hello".into()),
                };
                self.welcomed(ctx, up);
                let redial_at = self.next_redial();
                // The control stream, read across the loop's turns (a frame
                // half read when a session stream arrives is kept): the
                // restart notice ends the tunnel, other notices (member
                // lists) are ignored, a broken stream is a lost tunnel.
                let notice = async {
                    loop {
                        match read_frame(&mut ctl).await {
                            Ok(f) => match restart_notice(&f) {
                                Some(within) => return Some(within),
                                None => continue,
                            },
                            Err(_) => return None,
                        }
                    }
                };
                tokio::pin!(notice);
                loop {
                    let accepted = tokio::select! {
                        a = conn.accept_bi() => a,
                        n = &mut notice => {
                            self.lost(ctx);
                            let Some(within) = n else {
                                return Err("agent:tunnel_lost".into());
                            };
                            conn.close(0u32.into(), b"agent stopping");
                            return Ok(Ended::Restarting(within));
                        }
                        _ = sleep_until_some(redial_at) => {
                            self.redial(ctx);
                            conn.close(0u32.into(), b"redial");
                            return Ok(Ended::Redial);
                        }
                    };
                    match accepted {
                        Ok(bi) => {
                            let (me, ctx) = (self.clone(), ctx.clone());
                            tokio::spawn(async move {
                                me.desk_stream(&ctx, Box::new(QuicStream::new(bi))).await
                            });
                        }
                        Err(_) => {
                            self.lost(ctx);
                            return Err("agent:tunnel_lost".into());
                        }
                    }
                }
            }
            None => {
                let addr = t.tcp.to_string();
                let mut ctl =
                    tls_connect(&addr, server_name(), self.tls.clone(), TIMEOUT, KEEPALIVE)
                        .await
                        .map_err(|_| "agent:tls_connect".to_string())?;
                let hello = async {
                    write_message(
                        &mut ctl,
                        &AgentHello {
                            software: "kakehashi-loadgen".into(),
                            // A simulated desk echoes; it filters nothing.
                            enforces: false,
                            // As the real agent: take the `restarting` notice (a
                            // simulated desk dials one gateway only and ignores
                            // member lists).
                            members: true,
                        },
                    )
                    .await?;
                    let f = read_frame(&mut ctl).await?;
                    anyhow::Ok(AgentWelcome::from_frame(&f)?)
                };
                let welcome = match tokio::time::timeout(TIMEOUT, hello).await {
                    Ok(Ok(w)) => w,
                    _ => return Err("agent:hello".into()),
                };
                self.welcomed(ctx, up);
                let silence = Duration::from_secs(u64::from(welcome.ping_interval_secs.max(1)) * 3);
                let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
                let redial_at = self.next_redial();
                let r = loop {
                    let read = tokio::select! {
                        r = tokio::time::timeout(silence, read_frame(&mut ctl)) => r,
                        _ = sleep_until_some(redial_at) => {
                            // Dropping the control connection ends the tunnel;
                            // the gateway closes its data channels.
                            self.redial(ctx);
                            return Ok(Ended::Redial);
                        }
                    };
                    let f = match read {
                        Ok(Ok(f)) => f,
                        _ => break Err("agent:tunnel_lost".to_string()),
                    };
                    if let Some(within) = restart_notice(&f) {
                        break Ok(Ended::Restarting(within));
                    }
                    match f.kind {
                        FrameKind::MemberList => {}
                        FrameKind::Ping => {
                            if write_raw(&mut ctl, &pong).await.is_err() {
                                break Err("agent:tunnel_lost".into());
                            }
                        }
                        FrameKind::OpenDataChannel => {
                            let Ok(open) = OpenDataChannel::from_frame(&f) else {
                                break Err("agent:protocol".into());
                            };
                            let (me, ctx) = (self.clone(), ctx.clone());
                            let addr = addr.clone();
                            tokio::spawn(async move {
                                match tls_connect(
                                    &addr,
                                    server_name(),
                                    me.tls.clone(),
                                    TIMEOUT,
                                    KEEPALIVE,
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
                                            me.desk_stream(&ctx, Box::new(data)).await;
                                        }
                                    }
                                    Err(_) => ctx.errors.add("agent:data_connect"),
                                }
                            });
                        }
                        _ => break Err("agent:protocol".into()),
                    }
                };
                self.lost(ctx);
                r
            }
        }
    }

    /// A session stream from the gateway: check the ticket, then be the desk.
    async fn desk_stream(self: Arc<Self>, ctx: &Ctx, mut io: BoxIo) {
        let f = match tokio::time::timeout(TIMEOUT, read_frame(&mut io)).await {
            Ok(Ok(f)) => f,
            _ => return ctx.errors.add("agent:no_ticket"),
        };
        if f.kind != FrameKind::Ticket {
            return ctx.errors.add("agent:no_ticket");
        }
        let now = unix_now();
        let checked = ctx
            .verifier
            .verify(&f.payload, &self.desk, now)
            .and_then(|c| {
                self.replay
                    .lock()
                    .expect("replay")
                    .check_and_record(&c, now)
            });
        if let Err(e) = checked {
            ctx.errors
                .add(format!("agent:ticket:{}", e.reason().code()));
            let _ = write_message(&mut io, &Refusal::new(e.reason())).await;
            return;
        }
        ctx.tickets_ok.fetch_add(1, Ordering::Relaxed);
        let ok = frame::encode(FrameKind::TicketAccepted, &[]).expect("empty frame");
        if write_raw(&mut io, &ok).await.is_err() {
            return ctx.errors.add("agent:write");
        }
        let _ = traffic::serve_desk(io, ctx.desk_mode).await;
    }
}

/// One simulated laptop: one device certificate, one QUIC connection (its
/// sessions are streams on it) or one TLS connection per session.
pub struct Laptop {
    tls: Arc<rustls::ClientConfig>,
    token: Option<Secret>,
    quic: Option<(
        quinn::Endpoint,
        quinn::ClientConfig,
        AsyncMutex<Option<quinn::Connection>>,
    )>,
    /// Terminal listener (QUIC or TCP, by transport).
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Laptop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Laptop")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Laptop {
    /// A laptop dialling `addr` with a device's TLS config (see
    /// [`device_configs`]); QUIC laptops use endpoint `ep`.
    pub fn new(cfg: &DeviceConfig, addr: SocketAddr, ep: Option<quinn::Endpoint>) -> Arc<Self> {
        Arc::new(Self {
            tls: cfg.tls.clone(),
            token: cfg.token.clone(),
            quic: ep.map(|ep| (ep, cfg.quic.clone(), AsyncMutex::new(None))),
            addr,
        })
    }

    async fn stream(&self) -> Result<BoxIo, String> {
        match &self.quic {
            Some((ep, cfg, conn)) => {
                let mut guard = conn.lock().await;
                if let Some(c) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
                    if let Ok(bi) = c.open_bi().await {
                        return Ok(Box::new(QuicStream::new(bi)));
                    }
                }
                let c = match ep.connect_with(cfg.clone(), self.addr, server_name()) {
                    Ok(c) => quic_handshake(c, self.addr, TIMEOUT)
                        .await
                        .map_err(|e| quic_error_kind("setup", &e))?,
                    Err(_) => return Err("setup:quic_connect".into()),
                };
                let bi = c
                    .open_bi()
                    .await
                    .map_err(|_| "setup:open_stream".to_string())?;
                *guard = Some(c);
                Ok(Box::new(QuicStream::new(bi)))
            }
            None => tls_connect(
                &self.addr.to_string(),
                server_name(),
                self.tls.clone(),
                TIMEOUT,
                KEEPALIVE,
            )
            .await
            .map(|s| Box::new(s) as BoxIo)
            .map_err(|e| {
                if format!("{e:#}").contains("within") {
                    "setup:tls_timeout".to_string()
                } else {
                    "setup:tls_connect".to_string()
                }
            }),
        }
    }

    /// Open a session to `desk`. `Err` carries the error kind.
    pub async fn session(&self, desk: &str) -> Result<BoxIo, String> {
        let fut = async {
            let mut io = self.stream().await?;
            let req = SessionRequest {
                desk: desk.to_string(),
                token: self.token.clone(),
            };
            let f = req.to_frame().map_err(|_| "setup:encode".to_string())?;
            write_raw(&mut io, &f)
                .await
                .map_err(|_| "setup:write".to_string())?;
            let f = read_frame(&mut io)
                .await
                .map_err(|_| "setup:no_answer".to_string())?;
            match f.kind {
                FrameKind::SessionAccepted => {
                    SessionAccepted::from_frame(&f).map_err(|_| "setup:protocol".to_string())?;
                    Ok(io)
                }
                FrameKind::Refused => Err(match Refusal::from_frame(&f) {
                    Ok(r) => format!("setup:refused:{}", r.code),
                    Err(_) => "setup:protocol".into(),
                }),
                _ => Err("setup:protocol".into()),
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), fut).await {
            Ok(r) => r,
            Err(_) => Err("setup:timeout".into()),
        }
    }

    /// Close the laptop's QUIC connection, if it has one (a laptop leaving:
    /// its next session dials afresh).
    pub async fn close(&self) {
        if let Some((_, _, conn)) = &self.quic {
            if let Some(c) = conn.lock().await.take() {
                c.close(0u32.into(), b"bye");
            }
        }
    }

    /// Send a Ping frame on a fresh stream and wait for the Pong.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut io = self.stream().await.map_err(|e| anyhow!(e))?;
        write_raw(&mut io, &frame::encode(FrameKind::Ping, &[])?).await?;
        let f = read_frame(&mut io).await?;
        if f.kind != FrameKind::Pong {
            bail!("unexpected {:?}", f.kind);
        }
        Ok(())
    }
}

/// A device certificate's client configs, shared by the laptops that use it.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// TLS over TCP.
    pub tls: Arc<rustls::ClientConfig>,
    /// QUIC.
    pub quic: quinn::ClientConfig,
    /// The login token bound to this device (admission through a store).
    pub token: Option<Secret>,
}

/// Starts `agent`'s loop once fewer than `gate`'s permits of agents are
/// still waiting for their first welcome (a bounded handshake storm); the
/// handle says whether the welcome came within 60 s.
pub async fn launch(
    agent: Arc<Agent>,
    ctx: &Arc<Ctx>,
    target: &Arc<Mutex<AgentTarget>>,
    stop: &CancellationToken,
    gate: &Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<tokio::task::JoinHandle<bool>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let permit = gate.clone().acquire_owned().await?;
    tokio::spawn(agent.run(ctx.clone(), target.clone(), stop.clone(), Some(tx)));
    Ok(tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(60), rx).await;
        drop(permit);
        r.is_ok_and(|r| r.is_ok())
    }))
}

/// How many of the agents [`launch`] started were welcomed.
pub async fn count_up(waits: Vec<tokio::task::JoinHandle<bool>>) -> usize {
    let mut up = 0;
    for w in waits {
        up += usize::from(w.await.unwrap_or(false));
    }
    up
}

/// Client configs for the pooled device certificates. Resumption is off:
/// every new laptop connection is a full handshake, as for a fleet of
/// distinct laptops arriving in the morning (the worst case).
pub fn device_configs(pki: &crate::pki::BenchPki) -> anyhow::Result<Vec<DeviceConfig>> {
    // The gateway opens no stream to a laptop.
    let t = quic_transport(0);
    (0..crate::pki::DEVICE_POOL)
        .map(|i| {
            let mut cfg = tls::client_config(&pki.device(i)?, None, ALPN_TERMINAL)?;
            cfg.resumption = rustls::client::Resumption::disabled();
            Ok(DeviceConfig {
                quic: quic_client(cfg.clone(), t.clone())?,
                tls: Arc::new(cfg),
                token: None,
            })
        })
        .collect()
}

/// Sleep until `at`, or forever when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Error kind of a failed QUIC dial: a handshake error (quinn's, in the
/// error chain) or no answer within the timeout.
fn quic_error_kind(side: &str, e: &anyhow::Error) -> String {
    // Refused before the handshake while the gateway is busy: the client
    // reads it as `gateway_busy`, and so is it counted here.
    if kakehashi_transport::explain::chain_reason(e) == Some(kakehashi_proto::Reason::GatewayBusy) {
        return format!("{side}:refused:gateway_busy");
    }
    if e.downcast_ref::<quinn::ConnectionError>().is_some() {
        format!("{side}:quic_handshake")
    } else {
        format!("{side}:quic_timeout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_agents_allow_the_streams_their_sessions_need() {
        // P7: tunnels without sessions; P5: one session per desk.
        assert_eq!(agent_streams(0, 20_000), 16);
        assert_eq!(agent_streams(20_000, 20_000), 16);
        // P6: 15,000 live + 5,000 storm sessions over 15,000 desks.
        assert_eq!(agent_streams(20_000, 15_000), 16);
        // Many sessions to few desks: twice as many streams, up to the real agent's.
        assert_eq!(agent_streams(100, 4), 50);
        assert_eq!(
            agent_streams(1_000_000, 1),
            kakehashi_transport::quic::AGENT_SESSION_STREAMS
        );
        assert_eq!(agent_streams(5, 0), 16);
    }
}
