//! Kakehashi laptop client. `kakehashi connect DESK` opens a local port;
//! each connection to it becomes a session to the desk PC through the
//! gateway, over QUIC or, when UDP is blocked, TLS over TCP.

#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

pub mod config;
pub mod failover;
pub mod launch;
pub mod login;
pub mod soft;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use kakehashi_proto::io::{read_frame, write_raw};
use kakehashi_proto::message::{
    LoginResult, Logout, Message, RedeemLogin, Secret, SessionAccepted, SessionRequest,
};
use kakehashi_proto::{frame, FrameKind, Reason, Refusal, ALPN_TERMINAL};
use kakehashi_transport::dial::{quic_connect, resolve, tls_connect};
use kakehashi_transport::quic::QuicLimits;
use kakehashi_transport::stream::QuicStream;
use kakehashi_transport::tls::{self, TlsFiles};
use kakehashi_transport::{explain, keyfile, BoxIo, Transport, TransportChoice};
use tokio::sync::Mutex;

pub use config::Config;

/// How long `auto` waits for QUIC before falling back to TCP.
pub const QUIC_PROBE: Duration = Duration::from_millis(1500);
/// Handshake timeout for each transport, with no other gateway to go to.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshake timeout when `[gateway] fallback` lists other gateways: a
/// gateway that has not finished a handshake in 4 s is taken for dead and
/// the next one is tried, so a laptop notices a hung gateway within 5 s. A
/// handshake takes a few round trips; 4 s leaves room for two lost packets
/// (the first TCP and QUIC retransmissions are at 1 s and 3 s).
const FAILOVER_HANDSHAKE: Duration = Duration::from_secs(4);
/// How long the gateway may take to set a session up.
const SETUP: Duration = Duration::from_secs(20);
/// TCP keepalive of the laptop's connections.
const KEEPALIVE: Duration = kakehashi_transport::KEEPALIVE;

/// Why a session could not be opened.
#[derive(Debug)]
pub enum SessionError {
    /// The gateway (or our side) refused, with a reason to show the person.
    Refused(Refusal),
    /// Anything else.
    Other(anyhow::Error),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Refused(r) => write!(f, "{r}"),
            SessionError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<anyhow::Error> for SessionError {
    fn from(e: anyhow::Error) -> Self {
        // A TLS failure has a reason a person can act on.
        match explain::chain_reason(&e) {
            Some(r) => SessionError::Refused(Refusal::new(r).with_detail(format!("{e:#}"))),
            None => SessionError::Other(e),
        }
    }
}

/// Opens session streams to the gateway over the chosen transport.
#[derive(Debug)]
pub struct Dialer {
    cfg: Config,
    tls: Arc<rustls::ClientConfig>,
    transport: Transport,
    quic: Option<QuicState>,
    /// [`HANDSHAKE`], or [`FAILOVER_HANDSHAKE`] with other gateways to go to.
    handshake: Duration,
}

#[derive(Debug)]
struct QuicState {
    ep: quinn::Endpoint,
    addr: std::net::SocketAddr,
    conn: Mutex<Option<quinn::Connection>>,
}

/// How long a new session waits for the gateway to allow another stream on
/// the laptop's QUIC connection (the gateway caps streams per laptop and
/// hands back those of ended sessions in batches).
const STREAM_WAIT: Duration = Duration::from_secs(10);

/// A new stream on `c`; the inner error when the connection is lost or
/// refused (its close reason says why), the outer one when the gateway's
/// per-laptop stream limit is still reached after [`STREAM_WAIT`].
async fn open_stream(
    c: &quinn::Connection,
) -> anyhow::Result<Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>> {
    match tokio::time::timeout(STREAM_WAIT, c.open_bi()).await {
        Ok(r) => Ok(r),
        Err(_) => anyhow::bail!(
            "このPCから同時に開けるセッション数の上限に達しています。ほかのセッションを閉じてから再度お試しください。 / \
             This laptop has as many sessions open as the gateway allows; close one and try again."
        ),
    }
}

impl Dialer {
    /// Pick a transport by probing the gateway (a ping over a fresh
    /// connection, which also proves the gateway accepted our certificate).
    /// Returns the dialer and a note on how the transport was chosen.
    pub async fn establish(
        cfg: Config,
        choice: TransportChoice,
    ) -> Result<(Self, String), SessionError> {
        let files = TlsFiles {
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            crl: cfg.crl.clone(),
        };
        keyfile::check_key_file(&cfg.key).map_err(SessionError::Other)?;
        let m = files.load().map_err(SessionError::Other)?;
        // A stale CRL is a refusal with its reason (`crl_stale`).
        let tls = Arc::new(tls::client_config(&m, cfg.crl.as_deref(), ALPN_TERMINAL)?);
        let handshake = if cfg.fallback.is_empty() {
            HANDSHAKE
        } else {
            FAILOVER_HANDSHAKE
        };
        let mut d = Self {
            cfg,
            tls,
            transport: Transport::Quic,
            quic: None,
            handshake,
        };
        match choice {
            TransportChoice::Quic => {
                d.probe_quic(handshake).await?;
                Ok((d, "quic".into()))
            }
            TransportChoice::Tcp => {
                d.transport = Transport::Tcp;
                d.probe_tcp().await?;
                Ok((d, "tcp".into()))
            }
            TransportChoice::Auto => match d.probe_quic(QUIC_PROBE).await {
                Ok(()) => Ok((d, "quic".into())),
                // The gateway refused our certificate: TCP would say the same.
                Err(SessionError::Refused(r)) if r.code != Reason::GatewayUnreachable.code() => {
                    Err(SessionError::Refused(r))
                }
                Err(e) => {
                    let why = match &e {
                        SessionError::Refused(r) => r.detail.clone().unwrap_or_default(),
                        SessionError::Other(e) => format!("{e:#}"),
                    };
                    d.transport = Transport::Tcp;
                    d.quic = None;
                    d.probe_tcp().await?;
                    Ok((d, format!("tcp (QUIC unavailable: {why})")))
                }
            },
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    async fn probe_quic(&mut self, timeout: Duration) -> Result<(), SessionError> {
        let addr = resolve(&self.cfg.quic).await?;
        let ep =
            kakehashi_transport::quic::client((*self.tls).clone(), QuicLimits::default(), addr)?;
        let conn = quic_connect(&ep, addr, &self.cfg.server_name, timeout).await?;
        self.quic = Some(QuicState {
            ep,
            addr,
            conn: Mutex::new(Some(conn)),
        });
        let mut io = self.open().await?;
        ping(&mut io, timeout.max(Duration::from_secs(3))).await
    }

    async fn probe_tcp(&mut self) -> Result<(), SessionError> {
        let mut io = self.open().await?;
        ping(&mut io, self.handshake).await
    }

    /// A fresh stream to the gateway (a QUIC stream, or a new TLS connection).
    pub async fn open(&self) -> anyhow::Result<BoxIo> {
        match &self.quic {
            Some(q) => {
                // The lock is held only to read or replace the connection: a
                // stream waiting for a free slot must not hold up the others.
                let live = q
                    .conn
                    .lock()
                    .await
                    .as_ref()
                    .filter(|c| c.close_reason().is_none())
                    .cloned();
                if let Some(c) = live {
                    if let Ok(bi) = open_stream(&c).await? {
                        return Ok(Box::new(QuicStream::new(bi)));
                    }
                }
                // Connection lost (gateway restarted?): dial again, once.
                let mut guard = q.conn.lock().await;
                let c = match guard.as_ref().filter(|c| c.close_reason().is_none()) {
                    Some(c) => c.clone(), // another session dialled meanwhile
                    None => {
                        let silent = guard.as_ref().and_then(|c| c.close_reason())
                            == Some(quinn::ConnectionError::TimedOut);
                        if silent && !self.cfg.fallback.is_empty() {
                            // It went silent for the idle timeout (host hung
                            // or gone): the next gateway, not another wait.
                            anyhow::bail!(
                                "the gateway went silent for longer than the QUIC idle timeout"
                            );
                        }
                        let c = quic_connect(&q.ep, q.addr, &self.cfg.server_name, self.handshake)
                            .await?;
                        *guard = Some(c.clone());
                        c
                    }
                };
                drop(guard);
                let bi = open_stream(&c)
                    .await?
                    .context("cannot open a QUIC stream")?;
                Ok(Box::new(QuicStream::new(bi)))
            }
            None => Ok(Box::new(
                tls_connect(
                    &self.cfg.tcp,
                    &self.cfg.server_name,
                    self.tls.clone(),
                    self.handshake,
                    KEEPALIVE,
                )
                .await?,
            )),
        }
    }

    /// Open a session to `desk`, presenting the login token if there is one.
    /// On success the stream carries the desk's bytes.
    pub async fn session(
        &self,
        desk: &str,
        token: Option<&Secret>,
    ) -> Result<(BoxIo, SessionAccepted), SessionError> {
        let req = SessionRequest {
            desk: desk.to_string(),
            token: token.cloned(),
        };
        let (io, f) = self.request(&req.to_frame()?, SETUP).await?;
        Ok((io, SessionAccepted::from_frame(&f)?))
    }

    /// Exchange the portal's one-time code (and our PKCE verifier) for a
    /// token bound to this laptop's certificate.
    pub async fn redeem(
        &self,
        code: Secret,
        code_verifier: Secret,
    ) -> Result<LoginResult, SessionError> {
        let (_io, f) = self
            .request(
                &RedeemLogin {
                    code,
                    code_verifier,
                }
                .to_frame()?,
                SETUP,
            )
            .await?;
        Ok(LoginResult::from_frame(&f)?)
    }

    /// After a session stream ended: did the gateway end it, and why (policy
    /// change, device blocked, end of the allowed hours, operator…)?
    pub async fn end_reason(&self, session_id: &str) -> Option<Refusal> {
        use kakehashi_proto::message::{SessionEndQuery, SessionEndReport};
        let q = SessionEndQuery {
            session_id: session_id.to_string(),
        };
        let (_io, f) = self.request(&q.to_frame().ok()?, SETUP).await.ok()?;
        SessionEndReport::from_frame(&f).ok()?.reason
    }

    /// Revoke a token at the gateway.
    pub async fn logout(&self, token: Secret) -> Result<(), SessionError> {
        let (_io, f) = self.request(&Logout { token }.to_frame()?, SETUP).await?;
        match f.kind {
            FrameKind::LoggedOut => Ok(()),
            other => Err(anyhow!("unexpected {other:?} frame from the gateway").into()),
        }
    }

    /// Send one control frame on a fresh stream and read the answer; a
    /// `Refused` answer becomes [`SessionError::Refused`].
    async fn request(
        &self,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<(BoxIo, kakehashi_proto::Frame), SessionError> {
        let mut io = self.open().await?;
        let fut = async {
            write_raw(&mut io, frame)
                .await
                .context("cannot send to the gateway")?;
            let f = read_frame(&mut io)
                .await
                .context("no answer from the gateway")?;
            if f.kind == FrameKind::Refused {
                return Err(SessionError::Refused(Refusal::from_frame(&f)?));
            }
            Ok(f)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(f)) => Ok((io, f)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SessionError::Refused(Refusal::new(Reason::Timeout))),
        }
    }
}

impl From<kakehashi_proto::FrameError> for SessionError {
    fn from(e: kakehashi_proto::FrameError) -> Self {
        SessionError::Other(e.into())
    }
}

async fn ping(io: &mut BoxIo, timeout: Duration) -> Result<(), SessionError> {
    let fut = async {
        write_raw(
            io,
            &frame::encode(FrameKind::Ping, &[]).expect("empty frame"),
        )
        .await?;
        let f = read_frame(io).await?;
        match f.kind {
            FrameKind::Pong => Ok(()),
            FrameKind::Refused => Err(SessionError::Refused(Refusal::from_frame(&f)?)),
            other => Err(anyhow!("unexpected {other:?} frame").into()),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e: SessionError| match e {
            SessionError::Other(e) => SessionError::from(e),
            r => r,
        }),
        Err(_) => Err(SessionError::Refused(
            Refusal::new(Reason::GatewayUnreachable).with_detail("no answer to ping"),
        )),
    }
}

impl From<kakehashi_proto::io::FrameIoError> for SessionError {
    fn from(e: kakehashi_proto::io::FrameIoError) -> Self {
        match e {
            kakehashi_proto::io::FrameIoError::Io(io) => SessionError::from(anyhow::Error::new(io)),
            other => SessionError::Other(other.into()),
        }
    }
}

/// Print a refusal for a person: Japanese first, then English, then the code.
pub fn describe(r: &Refusal) -> String {
    let mut s = format!("{}\n{}\n(reason: {})", r.ja, r.en, r.code);
    if let Some(d) = &r.detail {
        s.push_str(&format!("\n(detail: {d})"));
    }
    s
}

/// Validate a desk id before talking to anyone.
pub fn check_desk(desk: &str) -> anyhow::Result<()> {
    if !kakehashi_proto::message::valid_id(desk) {
        bail!("invalid desk id {desk:?}: 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}
