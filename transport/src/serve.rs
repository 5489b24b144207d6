//! [`serve`]: the one accept loop of every listener — the gateway's TLS/TCP
//! and QUIC listeners for laptops and agents, and the web portal.
//!
//! The cap policy is the same everywhere and explicit: a connection is
//! accepted first and then given a place under the caps ([`Caps`]); over a
//! cap it is turned away at once ([`Listener::refuse`]). Waiting for a place
//! instead would let silent connections hold the accept loop. The handshake
//! runs under a time-out, and holding its own per-source place, so that
//! half-open handshakes from one address cannot take every slot. Each
//! connection is a task of the process's [`Shutdown`]: the loop stops
//! accepting when draining starts, and connections end at the force step at
//! the latest.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{warn, Instrument as _};

use crate::limit::{Over, SourceLimits};
use crate::shutdown::Shutdown;

/// Something that accepts connections.
pub trait Listener: Send + 'static {
    /// An accepted connection, before its handshake.
    type Conn: Send + 'static;

    /// The next connection and its peer's address; `None` when the
    /// listener is closed for good. Transient errors are handled inside.
    fn accept(&mut self) -> impl Future<Output = Option<(Self::Conn, SocketAddr)>> + Send;

    /// Turn away a connection over a cap.
    fn refuse(conn: Self::Conn);
}

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            match TcpListener::accept(self).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    // Out of descriptors and the like: back off, do not spin.
                    warn!(error = %e, "Accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn refuse(conn: TcpStream) {
        drop(conn);
    }
}

/// A QUIC endpoint as a [`Listener`]. Under load (more handshakes in
/// progress than `retry_above`) a peer must first show that it receives at
/// its address (a QUIC Retry) before any crypto work, and before it counts
/// against an address, which an unvalidated packet could forge.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    handshakes: SourceLimits,
    retry_above: usize,
    on_retry: Box<dyn Fn(SocketAddr) + Send + Sync>,
}

impl std::fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListener")
            .field("retry_above", &self.retry_above)
            .finish_non_exhaustive()
    }
}

impl QuicListener {
    /// Accept on `endpoint`; send a Retry to unvalidated peers while
    /// `handshakes` (the same caps given to [`serve`]) holds `retry_above`
    /// or more, calling `on_retry` for each.
    pub fn new(
        endpoint: quinn::Endpoint,
        handshakes: SourceLimits,
        retry_above: usize,
        on_retry: impl Fn(SocketAddr) + Send + Sync + 'static,
    ) -> Self {
        Self {
            endpoint,
            handshakes,
            retry_above,
            on_retry: Box::new(on_retry),
        }
    }
}

impl Listener for QuicListener {
    type Conn = quinn::Incoming;

    async fn accept(&mut self) -> Option<(quinn::Incoming, SocketAddr)> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let peer = incoming.remote_address();
            if !incoming.remote_address_validated()
                && self.handshakes.open() >= self.retry_above
                && incoming.may_retry()
            {
                (self.on_retry)(peer);
                let _ = incoming.retry();
                continue;
            }
            return Some((incoming, peer));
        }
    }

    fn refuse(conn: quinn::Incoming) {
        conn.refuse();
    }
}

/// The places a connection must find before it is served.
#[derive(Debug, Clone)]
pub struct Caps {
    /// Held for the connection's whole life.
    pub connections: SourceLimits,
    /// Held during the handshake only (`None`: no separate handshake cap).
    pub handshakes: Option<SourceLimits>,
    /// Asked before each handshake: `true` turns the connection away
    /// ([`Refused::Busy`]) before any work is done for it.
    pub busy: Option<BusyCheck>,
}

/// Whether the server is too busy for a new connection (see [`Caps::busy`]).
#[derive(Clone)]
pub struct BusyCheck(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for BusyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusyCheck")
    }
}

/// Which cap turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The cap on open connections.
    Connections(Over),
    /// The cap on handshakes in progress.
    Handshakes(Over),
    /// The server is busy ([`Caps::busy`]).
    Busy,
}

/// What a listener does with its connections.
pub trait Service: Send + Sync + 'static {
    /// The listener's accepted connection.
    type Conn: Send + 'static;
    /// A connection after its handshake, ready to serve.
    type Ready: Send + 'static;

    /// The tracing span of one connection.
    fn span(&self, peer: SocketAddr) -> tracing::Span;

    /// Whether `peer` forwards other clients' connections and names each
    /// client before the handshake (a load balancer sending the PROXY
    /// protocol, [`crate::proxy`]). Its connections take no per-source
    /// handshake place at accept — every client behind it would share one
    /// — and the service takes one for the client it names instead.
    fn forwarder(&self, _peer: SocketAddr) -> bool {
        false
    }

    /// The handshake (TLS, QUIC): `None` when it failed (logged and
    /// counted by the service). Runs under [`serve`]'s handshake time-out.
    fn handshake(
        &self,
        conn: Self::Conn,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<Self::Ready>> + Send;

    /// The handshake did not finish in time.
    fn timed_out(&self, peer: SocketAddr);

    /// A connection was turned away by a cap.
    fn refused(&self, peer: SocketAddr, why: Refused);

    /// Serve a connection until it ends; it is cut at the force step.
    fn serve(&self, ready: Self::Ready, peer: SocketAddr) -> impl Future<Output = ()> + Send;
}

/// Accept on `listener` until draining starts (or the listener closes),
/// each connection under `caps`, its handshake within `handshake_timeout`,
/// then served by `service` as a task of `shutdown`.
pub async fn serve<L, S>(
    mut listener: L,
    caps: Caps,
    handshake_timeout: Duration,
    service: Arc<S>,
    shutdown: Shutdown,
) where
    L: Listener,
    S: Service<Conn = L::Conn>,
{
    loop {
        let (conn, peer) = tokio::select! {
            biased;
            _ = shutdown.draining() => break,
            c = listener.accept() => match c {
                Some(c) => c,
                None => break,
            },
        };
        if caps.busy.as_ref().is_some_and(|b| (b.0)()) {
            service.refused(peer, Refused::Busy);
            L::refuse(conn);
            continue;
        }
        let ip = peer.ip();
        let place = match caps.connections.try_acquire(ip) {
            Ok(p) => p,
            Err(over) => {
                service.refused(peer, Refused::Connections(over));
                L::refuse(conn);
                continue;
            }
        };
        let handshakes = caps
            .handshakes
            .as_ref()
            .filter(|_| !service.forwarder(peer));
        let handshake_place = match handshakes.map(|h| h.try_acquire(ip)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(over)) => {
                service.refused(peer, Refused::Handshakes(over));
                L::refuse(conn);
                continue;
            }
        };
        let service = service.clone();
        let stop = shutdown.clone();
        let span = service.span(peer);
        shutdown.spawn(
            async move {
                let _place = place;
                // Boxed, the handshake and the service each: a task's future is
                // allocated at the size of its largest state for the whole life of
                // the connection, and the handshake's state is not needed after it.
                let handshake = tokio::time::timeout(
                    handshake_timeout,
                    Box::pin(service.handshake(conn, peer)),
                );
                let ready = tokio::select! {
                    _ = stop.forced() => return,
                    r = handshake => r,
                };
                drop(handshake_place);
                let ready = match ready {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(_) => return service.timed_out(peer),
                };
                tokio::select! {
                    _ = Box::pin(service.serve(ready, peer)) => {}
                    _ = stop.forced() => {}
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Echoes one line after a "handshake" that waits for the first byte.
    #[derive(Default)]
    struct Echo {
        refused: Mutex<Vec<Refused>>,
        timed_out: AtomicUsize,
        served: AtomicUsize,
        /// Every peer is a forwarder (a balancer).
        forwarding: bool,
    }

    impl Service for Echo {
        type Conn = TcpStream;
        type Ready = TcpStream;
        fn span(&self, _: SocketAddr) -> tracing::Span {
            tracing::Span::none()
        }
        fn forwarder(&self, _: SocketAddr) -> bool {
            self.forwarding
        }
        async fn handshake(&self, mut c: TcpStream, _: SocketAddr) -> Option<TcpStream> {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.ok()?;
            Some(c)
        }
        fn timed_out(&self, _: SocketAddr) {
            self.timed_out.fetch_add(1, Ordering::SeqCst);
        }
        fn refused(&self, _: SocketAddr, why: Refused) {
            self.refused.lock().unwrap().push(why);
        }
        async fn serve(&self, mut c: TcpStream, _: SocketAddr) {
            self.served.fetch_add(1, Ordering::SeqCst);
            let mut b = [0u8; 4];
            if c.read_exact(&mut b).await.is_ok() {
                let _ = c.write_all(&b).await;
            }
            // Then hold the connection until the peer closes it.
            let _ = c.read(&mut b).await;
        }
    }

    async fn closed(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// While the busy check says so, a connection is refused before its
    /// handshake; once it says otherwise, the next one is served.
    #[tokio::test]
    async fn a_busy_server_refuses_before_the_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = Arc::new(Echo::default());
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let caps = Caps {
            connections: SourceLimits::new(8, 8),
            handshakes: None,
            busy: Some(BusyCheck(Arc::new({
                let busy = busy.clone();
                move || busy.load(Ordering::SeqCst)
            }))),
        };
        let shutdown = Shutdown::new();
        tokio::spawn(serve(
            l,
            caps,
            Duration::from_secs(5),
            svc.clone(),
            shutdown.clone(),
        ));
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut c).await, "refused at once");
        assert_eq!(*svc.refused.lock().unwrap(), vec![Refused::Busy]);
        busy.store(false, Ordering::SeqCst);
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert_eq!(svc.served.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn caps_refuse_at_once_handshakes_time_out_and_drain_stops_accepting() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = Arc::new(Echo::default());
        let shutdown = Shutdown::new();
        let caps = Caps {
            connections: SourceLimits::new(2, 2),
            handshakes: Some(SourceLimits::new(usize::MAX, 1)),
            busy: None,
        };
        let loop_task = tokio::spawn(serve(
            l,
            caps,
            Duration::from_millis(300),
            svc.clone(),
            shutdown.clone(),
        ));
        // One silent connection holds the one handshake place of 127.0.0.1…
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // …so a second one is refused at once, not queued.
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut second).await);
        assert_eq!(
            *svc.refused.lock().unwrap(),
            vec![Refused::Handshakes(Over::PerSource)]
        );
        // The silent one is closed at the handshake time-out.
        assert!(closed(&mut silent).await);
        assert_eq!(svc.timed_out.load(Ordering::SeqCst), 1);
        // Two served connections fill the connection cap; a third is refused.
        let mut a = TcpStream::connect(addr).await.unwrap();
        a.write_all(b"!ping").await.unwrap();
        let mut echo = [0u8; 4];
        a.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        let mut b = TcpStream::connect(addr).await.unwrap();
        b.write_all(b"!").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut c).await);
        assert_eq!(
            svc.refused.lock().unwrap().last(),
            Some(&Refused::Connections(Over::Total))
        );
        assert_eq!(svc.served.load(Ordering::SeqCst), 2);
        // Draining stops the loop; the force step ends the open connections.
        let stopped = shutdown.stop(Duration::from_millis(100)).await;
        assert_eq!(stopped.lingering, 0);
        loop_task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
        assert!(closed(&mut a).await && closed(&mut b).await);
    }

    #[tokio::test]
    async fn a_forwarder_takes_no_per_source_handshake_place() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = Arc::new(Echo {
            forwarding: true,
            ..Echo::default()
        });
        let shutdown = Shutdown::new();
        let handshakes = SourceLimits::new(usize::MAX, 1);
        let caps = Caps {
            connections: SourceLimits::new(3, 3),
            handshakes: Some(handshakes.clone()),
            busy: None,
        };
        tokio::spawn(serve(
            l,
            caps,
            Duration::from_secs(5),
            svc.clone(),
            shutdown.clone(),
        ));
        // Two silent connections from one balancer: both wait in their
        // handshakes, neither is refused nor holds a per-source place.
        let _a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(!closed_soon(&mut b).await);
        assert!(svc.refused.lock().unwrap().is_empty());
        assert_eq!(handshakes.open(), 0);
        // The connection cap still holds.
        let _c = TcpStream::connect(addr).await.unwrap();
        let mut d = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut d).await);
        assert_eq!(
            *svc.refused.lock().unwrap(),
            vec![Refused::Connections(Over::Total)]
        );
        shutdown.stop(Duration::from_millis(100)).await;
    }

    /// Whether the peer closes `c` within a short while.
    async fn closed_soon(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
