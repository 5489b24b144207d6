//! Kakehashi desk agent. Runs on the desk PC, opens no listening port:
//! it dials out to every configured gateway and keeps each tunnel up with
//! capped, jittered backoff. For each session the gateway opens, it checks
//! the signed ticket (signature, validity, desk id, single use) and only
//! then connects the stream to the desk's local service.

pub mod config;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use kakehashi_pki::Identity;
use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, Message, OpenDataChannel,
};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal, ReplayGuard, TicketVerifier, ALPN_AGENT};
use kakehashi_transport::dial::{quic_connect, resolve, tls_connect};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::splice::splice;
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::tls::{self, TlsFiles};
use kakehashi_transport::{explain, unix_now, BoxIo, TransportChoice};
use rand::Rng as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
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

/// A configured agent.
#[derive(Debug)]
pub struct Agent {
    desk: String,
    cfg: Arc<Config>,
    tls: Arc<rustls::ClientConfig>,
    verifier: TicketVerifier,
    replay: Mutex<ReplayGuard>,
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
        let tls = Arc::new(tls::client_config(&m, cfg.crl.as_deref(), ALPN_AGENT)?);
        Ok(Arc::new(Self {
            desk,
            verifier: TicketVerifier::new(cfg.ticket_keys.clone()),
            replay: Mutex::new(ReplayGuard::new(REPLAY_CAPACITY)),
            tls,
            cfg: Arc::new(cfg),
        }))
    }

    /// The desk this agent serves.
    pub fn desk(&self) -> &str {
        &self.desk
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
        let mut backoff = self.cfg.backoff_initial;
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
                backoff = self.cfg.backoff_initial;
            }
            // Full jitter in [backoff/2, backoff] spreads a reconnect storm.
            let ms = backoff.as_millis() as u64;
            let delay = Duration::from_millis(rand::rng().random_range(ms / 2..=ms));
            debug!(
                delay_ms = delay.as_millis() as u64,
                "Reconnecting after backoff"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
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
            max_streams: 4096,
            ..QuicLimits::default()
        };
        let ep = kakehashi_transport::quic::client((*self.tls).clone(), limits, addr)?;
        let conn = quic_connect(&ep, addr, &gw.server_name, timeout).await?;
        let hello = async {
            let mut ctl = QuicStream::new(conn.open_bi().await?);
            write_message(
                &mut ctl,
                &AgentHello {
                    software: software(),
                },
            )
            .await?;
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
        let mut sessions = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                bi = conn.accept_bi() => match bi {
                    Ok(bi) => { sessions.spawn(self.clone().handle_session(Box::new(QuicStream::new(bi))).in_current_span()); }
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
            self.tls.clone(),
            self.cfg.handshake_timeout,
            keepalive,
        )
        .await?;
        write_message(
            &mut ctl,
            &AgentHello {
                software: software(),
            },
        )
        .await?;
        let f = tokio::time::timeout(self.cfg.handshake_timeout, read_frame(&mut ctl))
            .await
            .map_err(|_| anyhow!("gateway did not welcome the tunnel in time"))??;
        if f.kind == FrameKind::Refused {
            bail!("gateway refused the tunnel: {}", Refusal::from_frame(&f)?);
        }
        let welcome = AgentWelcome::from_frame(&f)?;
        info!(transport = "tcp", gateway_name = %welcome.gateway, "Tunnel up");
        // The gateway pings every `ping_interval_secs`; three missed pings mean the tunnel is dead.
        let silence = Duration::from_secs(u64::from(welcome.ping_interval_secs.max(1)) * 3);
        let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
        loop {
            let f = tokio::select! {
                _ = stop.cancelled() => { let _ = ctl.shutdown().await; return Ok(()) }
                r = tokio::time::timeout(silence, read_frame(&mut ctl)) => match r {
                    Err(_) => bail!("gateway silent for {silence:?}"),
                    Ok(r) => r.context("TCP tunnel lost")?,
                },
            };
            match f.kind {
                FrameKind::Ping => write_raw(&mut ctl, &pong).await?,
                FrameKind::OpenDataChannel => {
                    let open = OpenDataChannel::from_frame(&f)?;
                    let me = self.clone();
                    let gw = gw.clone();
                    tokio::spawn(
                        async move {
                            match tls_connect(
                                &gw.tcp,
                                &gw.server_name,
                                me.tls.clone(),
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
                                        me.handle_session(Box::new(data)).await;
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
    async fn handle_session(self: Arc<Self>, mut io: BoxIo) {
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
            info!(controls = ?claims.controls, "Session started");
            match splice(&mut io, &mut target).await {
                Ok((up, down)) => {
                    info!(bytes_to_desk = up, bytes_from_desk = down, "Session ended")
                }
                Err(e) => info!(error = %e, "Session ended by a peer"),
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
