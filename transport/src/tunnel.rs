//! [`Tunnel`]: a desk agent's tunnel to a gateway, on QUIC or TLS over TCP,
//! with one interface for both and for both ends.
//!
//! A tunnel has a *control stream* — on QUIC the first bidirectional stream
//! the agent opens, on TCP the TLS connection itself — that carries the
//! agent's hello and the gateway's welcome, the agent's filter reports, and
//! on TCP the gateway's pings. *Session streams* are opened by the gateway:
//! on QUIC as new streams of the connection; on TCP the gateway sends an
//! `OpenDataChannel` on the control stream and the agent dials a new TLS
//! connection that starts with `DataChannelHello`, which the gateway matches
//! to the waiting session ([`DataChannels`]).
//!
//! The gateway's end: [`Tunnel::accept_quic`] / [`Tunnel::from_tcp`], the
//! hello and welcome on [`Tunnel::control`], then [`Tunnel::into_gateway`]
//! gives a [`SessionOpener`] (kept in the agent registry) and a
//! [`GatewayControl`] to run. The agent's end: [`Tunnel::open_quic`] /
//! [`Tunnel::from_tcp`], the same hello, then [`Tunnel::into_agent`] gives an
//! [`AgentControl`] yielding session streams.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kakehashi_proto::io::{read_frame, write_message, write_raw};
use kakehashi_proto::message::{DataChannelHello, Message, OpenDataChannel};
use kakehashi_proto::{frame, Frame, FrameKind};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::stream::QuicStream;
use crate::{random_hex, BoxIo, Transport};

/// Control frames queued for writing before the tunnel counts as stuck.
const CONTROL_QUEUE: usize = 64;
/// How long a stopping gateway waits for the agent to close a QUIC tunnel
/// after the last control frames, before closing it itself.
const QUIC_CLOSE_LINGER: Duration = Duration::from_millis(300);

/// One end of a tunnel before its control loop runs.
pub struct Tunnel {
    control: BoxIo,
    quic: Option<quinn::Connection>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

/// Why a tunnel ended or a session stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The QUIC connection closed.
    #[error("QUIC tunnel lost: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// The control stream failed or closed.
    #[error("control stream lost: {0}")]
    Control(#[from] kakehashi_proto::io::FrameIoError),
    /// Nothing came from the peer for longer than allowed.
    #[error("peer silent for {0:?}")]
    Silent(Duration),
    /// The peer sent a frame this end does not expect.
    #[error("unexpected {0:?} frame on the tunnel")]
    Unexpected(FrameKind),
    /// The tunnel is gone (its control loop ended).
    #[error("tunnel closed")]
    Closed,
}

impl Tunnel {
    /// The gateway's end of an agent's QUIC connection: the agent's first stream is the control stream.
    pub async fn accept_quic(conn: quinn::Connection) -> Result<Self, TunnelError> {
        let bi = conn.accept_bi().await?;
        Ok(Self {
            control: Box::new(QuicStream::new(bi)),
            quic: Some(conn),
        })
    }

    /// The agent's end of a QUIC connection to a gateway: opens the control stream.
    pub async fn open_quic(conn: quinn::Connection) -> Result<Self, TunnelError> {
        let bi = conn.open_bi().await?;
        Ok(Self {
            control: Box::new(QuicStream::new(bi)),
            quic: Some(conn),
        })
    }

    /// Either end of a TLS-over-TCP tunnel: the connection is the control stream.
    pub fn from_tcp(io: BoxIo) -> Self {
        Self {
            control: io,
            quic: None,
        }
    }

    /// Which transport carries it.
    pub fn transport(&self) -> Transport {
        match self.quic {
            Some(_) => Transport::Quic,
            None => Transport::Tcp,
        }
    }

    /// The control stream, for the hello and the welcome.
    pub fn control(&mut self) -> &mut BoxIo {
        &mut self.control
    }

    /// The control stream itself: on TCP a connection that turned out to be
    /// something else (a data channel, a refusal to send).
    pub fn into_control(self) -> BoxIo {
        self.control
    }

    /// Close the tunnel with a short reason the peer may log.
    pub async fn close(mut self, why: &'static [u8]) {
        if let Some(c) = &self.quic {
            c.close(quinn::VarInt::from_u32(0), why);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.control.shutdown()).await;
    }

    /// The gateway's end after the welcome: the opener of session streams
    /// for the registry, and the control loop. `desk` is the agent's desk
    /// (a TCP data connection is matched to its desk too).
    pub fn into_gateway(
        self,
        channels: DataChannels,
        desk: &str,
    ) -> (SessionOpener, GatewayControl) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let tx_keep = tx.clone();
        let opener = match &self.quic {
            Some(c) => SessionOpener::Quic(c.clone()),
            None => SessionOpener::Tcp {
                control: tx,
                channels,
                desk: desk.to_string(),
            },
        };
        let control = GatewayControl {
            tunnel: self,
            outgoing: rx,
            sender: tx_keep,
        };
        (opener, control)
    }

    /// The agent's end after the welcome. `silence`: how long the gateway
    /// may send nothing on a TCP control stream (it pings) before the tunnel
    /// counts as dead (QUIC has its own idle timeout). `dial` makes a new
    /// data connection for a TCP session.
    pub fn into_agent(self, silence: Duration, dial: DataDialer) -> AgentControl {
        let quic = self.quic.clone();
        let transport = self.transport();
        let (rd, mut wr) = tokio::io::split(self.control);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(CONTROL_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel::<Result<AgentEvent, TunnelError>>(CONTROL_QUEUE);
        // The writer: pongs and reports, one frame at a time.
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if write_raw(&mut wr, &f).await.is_err() {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        });
        // The reader: frames are read by their own task, as a read cut short
        // by a write would lose bytes of the frame stream.
        let reader = tokio::spawn(agent_reader(
            rd,
            transport,
            silence,
            out_tx.clone(),
            ev_tx,
            dial,
        ));
        AgentControl {
            quic,
            outgoing: out_tx,
            events: ev_rx,
            _tasks: [AbortOnDrop(writer), AbortOnDrop(reader)],
        }
    }
}

/// What the agent's end of a tunnel yields.
pub enum AgentEvent {
    /// A session stream the gateway opened.
    Session(BoxIo),
    /// A frame for the agent itself on the control stream: the cluster's
    /// member list ([`FrameKind::MemberList`]) or a notice
    /// ([`FrameKind::Refused`], e.g. `restarting`).
    Control(Frame),
}

impl std::fmt::Debug for AgentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEvent::Session(_) => f.write_str("Session"),
            AgentEvent::Control(fr) => f.debug_tuple("Control").field(&fr.kind).finish(),
        }
    }
}

/// Reads the agent's control stream: answers pings, turns `OpenDataChannel`
/// into a dialled data connection, hands member lists and notices up, ends
/// on silence (TCP) or a bad frame.
async fn agent_reader(
    mut rd: tokio::io::ReadHalf<BoxIo>,
    transport: Transport,
    silence: Duration,
    out: mpsc::Sender<Vec<u8>>,
    events: mpsc::Sender<Result<AgentEvent, TunnelError>>,
    dial: DataDialer,
) {
    let pong = frame::encode(FrameKind::Pong, &[]).expect("empty frame");
    let ended = loop {
        let f = match transport {
            Transport::Tcp => match tokio::time::timeout(silence, read_frame(&mut rd)).await {
                Ok(r) => r,
                Err(_) => break TunnelError::Silent(silence),
            },
            Transport::Quic => read_frame(&mut rd).await,
        };
        let f = match f {
            Ok(f) => f,
            Err(e) => break e.into(),
        };
        match f.kind {
            FrameKind::Ping => {
                let _ = out.try_send(pong.clone());
            }
            FrameKind::Pong => {}
            FrameKind::MemberList | FrameKind::Refused => {
                // Bounded: a gateway flooding notices waits for the agent.
                if events.send(Ok(AgentEvent::Control(f))).await.is_err() {
                    return;
                }
            }
            FrameKind::OpenDataChannel if transport == Transport::Tcp => {
                let open = match OpenDataChannel::from_frame(&f) {
                    Ok(o) => o,
                    Err(_) => break TunnelError::Unexpected(f.kind),
                };
                let dial = dial.clone();
                let events = events.clone();
                // Dialled on its own: a slow dial must not hold the control stream.
                tokio::spawn(async move {
                    match dial().await {
                        Ok(mut data) => {
                            let hello = DataChannelHello {
                                channel: open.channel,
                            };
                            if write_message(&mut data, &hello).await.is_ok() {
                                let _ = events.send(Ok(AgentEvent::Session(data))).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "Cannot open data connection")
                        }
                    }
                });
            }
            other => break TunnelError::Unexpected(other),
        }
    };
    let _ = events.send(Err(ended)).await;
}

/// Dials a new data connection to the same gateway, for one TCP session.
pub type DataDialer =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<BoxIo>> + Send>> + Send + Sync>;

/// The agent's running end of a tunnel.
pub struct AgentControl {
    quic: Option<quinn::Connection>,
    outgoing: mpsc::Sender<Vec<u8>>,
    events: mpsc::Receiver<Result<AgentEvent, TunnelError>>,
    _tasks: [AbortOnDrop<()>; 2],
}

impl std::fmt::Debug for AgentControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentControl").finish_non_exhaustive()
    }
}

impl AgentControl {
    /// The next session stream the gateway opens or control frame it
    /// sends; an error when the tunnel is lost. Cancel-safe.
    pub async fn next(&mut self) -> Result<AgentEvent, TunnelError> {
        let quic_stream = async {
            match &self.quic {
                Some(c) => c
                    .accept_bi()
                    .await
                    .map(|bi| AgentEvent::Session(Box::new(QuicStream::new(bi)))),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = quic_stream => Ok(s?),
            e = self.events.recv() => e.unwrap_or(Err(TunnelError::Closed)),
        }
    }

    /// The next session stream the gateway opens, skipping control frames;
    /// an error when the tunnel is lost. Cancel-safe.
    pub async fn next_session(&mut self) -> Result<BoxIo, TunnelError> {
        loop {
            if let AgentEvent::Session(io) = self.next().await? {
                return Ok(io);
            }
        }
    }

    /// Queue a message on the control stream. A full queue (a gateway that
    /// does not read) costs the message, not the tunnel.
    pub fn send(&self, m: &impl Message) -> Result<(), TunnelError> {
        let f = m.to_frame().map_err(|_| TunnelError::Closed)?;
        self.outgoing.try_send(f).map_err(|_| TunnelError::Closed)
    }

    /// Close the tunnel (QUIC: with `why`; TCP: the control connection).
    pub fn close(self, why: &'static [u8]) {
        if let Some(c) = &self.quic {
            c.close(quinn::VarInt::from_u32(0), why);
        }
    }
}

/// How the gateway opens a session stream to one agent. Cheap to clone.
#[derive(Clone)]
pub enum SessionOpener {
    /// A new stream of the agent's QUIC connection.
    Quic(quinn::Connection),
    /// Ask on the control stream for a new data connection.
    Tcp {
        /// The control loop's outgoing frames.
        control: mpsc::Sender<Vec<u8>>,
        /// Where the data connection arrives.
        channels: DataChannels,
        /// The agent's desk, which alone may claim the channel.
        desk: String,
    },
}

impl std::fmt::Debug for SessionOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionOpener::Quic(_) => "SessionOpener::Quic",
            SessionOpener::Tcp { .. } => "SessionOpener::Tcp",
        })
    }
}

impl SessionOpener {
    /// Open one session stream to the agent. The caller bounds the wait.
    pub async fn open(&self) -> Result<BoxIo, TunnelError> {
        match self {
            SessionOpener::Quic(c) => Ok(Box::new(QuicStream::new(c.open_bi().await?))),
            SessionOpener::Tcp {
                control,
                channels,
                desk,
            } => {
                let channel = random_hex(16);
                let (wait, _guard) = channels.expect(&channel, desk);
                let msg = OpenDataChannel { channel }
                    .to_frame()
                    .map_err(|_| TunnelError::Closed)?;
                control.send(msg).await.map_err(|_| TunnelError::Closed)?;
                wait.await.map_err(|_| TunnelError::Closed)
            }
        }
    }
}

/// TCP data connections the gateway asked agents for, by channel id, each
/// waiting for its connection. Cheap to clone.
#[derive(Clone, Default)]
pub struct DataChannels {
    waiting: Arc<Mutex<Waiters>>,
}

/// Channel id → (the desk that may claim it, where its connection goes).
type Waiters = HashMap<String, (String, oneshot::Sender<BoxIo>)>;

impl std::fmt::Debug for DataChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannels")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

/// Removes a waiting channel however the wait ends.
struct Waiting {
    channels: DataChannels,
    channel: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.channels.lock().remove(&self.channel);
    }
}

impl DataChannels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // Every update is one insert or remove; a panic cannot leave it half-done.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, channel: &str, desk: &str) -> (oneshot::Receiver<BoxIo>, Waiting) {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .insert(channel.to_string(), (desk.to_string(), tx));
        let guard = Waiting {
            channels: self.clone(),
            channel: channel.to_string(),
        };
        (rx, guard)
    }

    /// A data connection that said `DataChannelHello`: handed to its
    /// session. Only the desk the channel was opened for may claim it; any
    /// other connection is given back.
    pub fn deliver(&self, hello: &Frame, desk: &str, io: BoxIo) -> Result<(), BoxIo> {
        let Ok(h) = DataChannelHello::from_frame(hello) else {
            return Err(io);
        };
        let waiting = {
            let mut w = self.lock();
            match w.get(&h.channel) {
                Some((d, _)) if d == desk => w.remove(&h.channel),
                _ => None,
            }
        };
        match waiting {
            Some((_, tx)) => tx.send(io),
            None => Err(io),
        }
    }

    /// Channels waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }
}

/// The gateway's running end of a tunnel.
pub struct GatewayControl {
    tunnel: Tunnel,
    outgoing: mpsc::Receiver<Vec<u8>>,
    sender: mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for GatewayControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayControl")
            .field("transport", &self.tunnel.transport())
            .finish_non_exhaustive()
    }
}

impl GatewayControl {
    /// Where to queue encoded frames for the agent's control stream (the
    /// member list, a `restarting` notice), written in order by [`Self::run`].
    pub fn sender(&self) -> mpsc::Sender<Vec<u8>> {
        self.sender.clone()
    }

    /// Run the control stream until the tunnel is lost or `stop` resolves:
    /// every frame but pings and pongs goes to `on_frame` (in order, on a
    /// task of its own, so a slow handler never delays a ping); on TCP,
    /// a ping every `ping` and the tunnel dropped after `idle` without a
    /// frame from the agent (QUIC has its own keepalive and idle timeout).
    /// `on_frame` returning `false` ends the tunnel.
    pub async fn run<F, Fut>(
        self,
        ping: Duration,
        idle: Duration,
        mut on_frame: F,
        stop: impl Future<Output = &'static [u8]>,
    ) -> Result<(), TunnelError>
    where
        F: FnMut(Frame) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let GatewayControl {
            tunnel,
            mut outgoing,
            sender,
        } = self;
        // Queued frames come from clones; this one must not keep the queue open.
        drop(sender);
        let quic = tunnel.quic.clone();
        let tcp = quic.is_none();
        let (mut rd, mut wr) = tokio::io::split(tunnel.control);
        let last_seen = Arc::new(Mutex::new(Instant::now()));
        let seen = last_seen.clone();
        let mut reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                let f = match read_frame(&mut rd).await {
                    Ok(f) => f,
                    Err(e) => break Err(TunnelError::from(e)),
                };
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                if matches!(f.kind, FrameKind::Ping | FrameKind::Pong) {
                    continue;
                }
                if !on_frame(f).await {
                    break Ok(());
                }
            }
        }));
        let quic_closed = async {
            match &quic {
                Some(c) => c.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(quic_closed, stop);
        let mut tick = tokio::time::interval(ping);
        let ping_frame = frame::encode(FrameKind::Ping, &[]).expect("empty frame");
        let result = loop {
            tokio::select! {
                why = &mut stop => {
                    // What was queued before the stop (a `restarting`
                    // notice) goes out first.
                    let flush = async {
                        while let Ok(f) = outgoing.try_recv() {
                            if write_raw(&mut wr, &f).await.is_err() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
                    if let Some(c) = &quic {
                        // A QUIC close may overtake stream data: give the
                        // agent a moment to read and close first.
                        let _ = tokio::time::timeout(QUIC_CLOSE_LINGER, c.closed()).await;
                        c.close(quinn::VarInt::from_u32(0), why);
                    }
                    break Ok(());
                }
                e = &mut quic_closed => break Err(TunnelError::Quic(e)),
                r = &mut reader.0 => {
                    debug!("Agent control stream closed");
                    break r.unwrap_or(Err(TunnelError::Closed));
                }
                Some(f) = outgoing.recv() => if let Err(e) = write_raw(&mut wr, &f).await {
                    break Err(e.into());
                },
                _ = tick.tick(), if tcp => {
                    let silent = last_seen.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    if silent > idle {
                        break Err(TunnelError::Silent(silent));
                    }
                    if let Err(e) = write_raw(&mut wr, &ping_frame).await {
                        break Err(e.into());
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        result
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::QuicLimits;
    use crate::test_certs::TestCerts;
    use kakehashi_proto::message::FilterReport;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const ALPN: &[u8] = b"kakehashi-unit";
    const DESK: &str = "DESK-1";

    /// Both ends of a tunnel on `transport`, on loopback, with real TLS.
    struct Pair {
        gateway: Tunnel,
        agent: Tunnel,
        channels: DataChannels,
        dial: DataDialer,
        _keep: Box<dyn std::any::Any + Send>,
    }

    async fn pair(transport: Transport) -> Pair {
        let certs = Arc::new(TestCerts::new());
        let channels = DataChannels::default();
        match transport {
            Transport::Quic => {
                // As the gateway and the agent: each grants the other the streams it opens.
                let streams = |max_streams| QuicLimits {
                    max_streams,
                    ..QuicLimits::default()
                };
                let srv = crate::quic::server(
                    "127.0.0.1:0".parse().unwrap(),
                    certs.server(ALPN),
                    streams(4),
                    crate::quic::ResetKey::random(),
                )
                .unwrap();
                let addr = srv.local_addr().unwrap();
                let cli = crate::quic::client(certs.client(ALPN), streams(16), addr).unwrap();
                let (c, s) = tokio::join!(
                    crate::dial::quic_connect(&cli, addr, "localhost", Duration::from_secs(5)),
                    async { srv.accept().await.unwrap().await.unwrap() }
                );
                let mut agent = Tunnel::open_quic(c.unwrap()).await.unwrap();
                // A QUIC stream reaches the peer with its first bytes.
                write_raw(
                    agent.control(),
                    &frame::encode(FrameKind::Ping, &[]).unwrap(),
                )
                .await
                .unwrap();
                let mut gateway = Tunnel::accept_quic(s).await.unwrap();
                assert_eq!(
                    read_frame(gateway.control()).await.unwrap().kind,
                    FrameKind::Ping
                );
                let dial: DataDialer =
                    Arc::new(|| Box::pin(async { anyhow::bail!("QUIC dials nothing") }));
                Pair {
                    gateway,
                    agent,
                    channels,
                    dial,
                    _keep: Box::new((certs, srv, cli)),
                }
            }
            Transport::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap().to_string();
                let server = Arc::new(certs.server(ALPN));
                let client = Arc::new(certs.client(ALPN));
                let dial: DataDialer = {
                    let (addr, client) = (addr.clone(), client.clone());
                    Arc::new(move || {
                        let (addr, client) = (addr.clone(), client.clone());
                        Box::pin(async move {
                            let io = crate::dial::tls_connect(
                                &addr,
                                "localhost",
                                client,
                                Duration::from_secs(5),
                                Duration::from_secs(10),
                            )
                            .await?;
                            Ok(Box::new(io) as BoxIo)
                        })
                    })
                };
                let (agent, gateway) = tokio::join!(dial(), async {
                    let tcp = l.accept().await.unwrap().0;
                    crate::tls_stream::accept(server.clone(), tcp)
                        .await
                        .unwrap()
                });
                // The gateway's listener after the tunnel: data connections, each
                // delivered to the session waiting for it.
                let ch = channels.clone();
                let listener = tokio::spawn(async move {
                    while let Ok((tcp, _)) = l.accept().await {
                        let mut io: BoxIo = Box::new(
                            crate::tls_stream::accept(server.clone(), tcp)
                                .await
                                .unwrap(),
                        );
                        let hello = read_frame(&mut io).await.unwrap();
                        assert_eq!(hello.kind, FrameKind::DataChannelHello);
                        if ch.deliver(&hello, DESK, io).is_err() {
                            panic!("data connection not delivered");
                        }
                    }
                });
                Pair {
                    gateway: Tunnel::from_tcp(Box::new(gateway)),
                    agent: Tunnel::from_tcp(agent.unwrap()),
                    channels,
                    dial,
                    _keep: Box::new((certs, AbortOnDrop(listener))),
                }
            }
        }
    }

    fn report(n: u32) -> FilterReport {
        FilterReport {
            session_id: format!("s-{n}"),
            kind: "clipboard_data".into(),
            what: "cliprdr".into(),
            direction: Some("server_to_client".into()),
            count: n,
        }
    }

    /// The same behaviour on both transports: sessions opened by the
    /// gateway reach the agent and carry bytes both ways, reports reach
    /// the gateway, pings keep a quiet TCP tunnel alive, and a stop on
    /// the gateway's side ends the agent's tunnel.
    #[tokio::test]
    async fn one_tunnel_behaves_alike_on_quic_and_tcp() {
        for transport in [Transport::Quic, Transport::Tcp] {
            let p = pair(transport).await;
            assert_eq!(p.gateway.transport(), transport);
            assert_eq!(p.agent.transport(), transport);
            let (opener, control) = p.gateway.into_gateway(p.channels.clone(), DESK);
            let to_agent = control.sender();
            let (frames_tx, mut frames) = mpsc::channel(8);
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let gw = tokio::spawn(control.run(
                Duration::from_millis(100),
                Duration::from_secs(5),
                move |f| {
                    let tx = frames_tx.clone();
                    async move { tx.send(f).await.is_ok() }
                },
                async move {
                    let _ = stop_rx.await;
                    &b"test over"[..]
                },
            ));
            // The agent's silence limit is shorter than the test's pause
            // below: only the gateway's pings keep the TCP tunnel up.
            let mut agent = p
                .agent
                .into_agent(Duration::from_millis(400), p.dial.clone());

            for round in 0..3u8 {
                // A QUIC stream reaches the agent with its first bytes, as the
                // gateway's ticket does.
                let mut g = opener.open().await.unwrap();
                g.write_all(&[round; 5]).await.unwrap();
                g.flush().await.unwrap();
                let mut a = agent.next_session().await.unwrap();
                let mut b = [0u8; 5];
                a.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [round; 5], "{transport}");
                a.write_all(b"back").await.unwrap();
                a.flush().await.unwrap();
                let mut b = [0u8; 4];
                g.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"back", "{transport}");
            }
            assert_eq!(p.channels.waiting(), 0, "{transport}");

            agent.send(&report(7)).unwrap();
            let f = tokio::time::timeout(Duration::from_secs(5), frames.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                FilterReport::from_frame(&f).unwrap().count,
                7,
                "{transport}"
            );

            // Quiet for longer than the agent's silence limit: still up.
            tokio::time::sleep(Duration::from_millis(900)).await;
            let mut g = opener.open().await.unwrap();
            g.write_all(b"x").await.unwrap();
            g.flush().await.unwrap();
            assert!(agent.next_session().await.is_ok(), "{transport}");

            // A frame for the agent itself (a member list) reaches it as
            // such, between sessions.
            let list = frame::encode(FrameKind::MemberList, b"signed list").unwrap();
            to_agent.send(list).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), agent.next())
                .await
                .unwrap()
                .unwrap()
            {
                AgentEvent::Control(f) => {
                    assert_eq!(
                        (f.kind, f.payload.as_slice()),
                        (FrameKind::MemberList, &b"signed list"[..]),
                        "{transport}"
                    )
                }
                AgentEvent::Session(_) => panic!("{transport}: a session instead of the list"),
            }

            // A notice queued just before the stop goes out before the
            // tunnel ends; then the agent learns the end.
            let notice = frame::encode(FrameKind::Refused, b"{}").unwrap();
            to_agent.send(notice).await.unwrap();
            stop_tx.send(()).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), agent.next())
                .await
                .unwrap();
            assert!(
                matches!(&got, Ok(AgentEvent::Control(f)) if f.kind == FrameKind::Refused),
                "{transport}: {got:?}"
            );
            gw.await.unwrap().unwrap();
            let ended = tokio::time::timeout(Duration::from_secs(5), agent.next_session())
                .await
                .unwrap();
            assert!(ended.is_err(), "{transport}");
        }
    }

    #[tokio::test]
    async fn a_tcp_data_connection_goes_only_to_its_own_desk() {
        let channels = DataChannels::default();
        let (rx, _guard) = channels.expect("c1", DESK);
        let hello = DataChannelHello {
            channel: "c1".into(),
        }
        .to_frame()
        .unwrap();
        let hello = kakehashi_proto::frame::decode(&hello).unwrap().unwrap().0;
        let (a, _b) = tokio::io::duplex(64);
        // Another desk cannot claim it, and an unknown channel is given back.
        let a = channels.deliver(&hello, "DESK-2", Box::new(a)).unwrap_err();
        assert_eq!(channels.waiting(), 1);
        assert!(channels.deliver(&hello, DESK, a).is_ok());
        assert!(rx.await.is_ok());
        assert_eq!(channels.waiting(), 0);
        let (c, _d) = tokio::io::duplex(64);
        assert!(channels.deliver(&hello, DESK, Box::new(c)).is_err());
        // A session that stops waiting leaves nothing behind.
        let (_rx, guard) = channels.expect("c2", DESK);
        assert_eq!(channels.waiting(), 1);
        drop(guard);
        assert_eq!(channels.waiting(), 0);
    }

    #[tokio::test]
    async fn a_silent_tcp_gateway_ends_the_agents_tunnel() {
        let p = pair(Transport::Tcp).await;
        // The gateway's end never runs its control loop: no pings.
        let _gateway = p.gateway;
        let mut agent = p.agent.into_agent(Duration::from_millis(300), p.dial);
        let r = tokio::time::timeout(Duration::from_secs(5), agent.next_session())
            .await
            .unwrap();
        let e = r.err().expect("the tunnel ends");
        assert!(matches!(e, TunnelError::Silent(_)), "{e}");
    }
}
