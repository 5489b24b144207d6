//! The portal's accept loop and HTTP/1.1 connections.
//!
//! Every connection is accepted first and then given a place under the
//! caps per source address and in total ([`SourceLimits`]); over a cap it
//! is closed at once, so silent or half-open connections never stall the
//! loop and one address cannot take the others' places. The TLS handshake
//! runs under a time-out; hyper then serves the connection with a
//! header-read time-out (a client that sends half a request and stops is
//! closed) and the connection is closed after a time with nothing sent
//! either way. The accept loop is the one every listener uses
//! ([`kakehashi_transport::serve`]). On shutdown every connection is asked
//! to finish its request and close; after the gateway's shutdown grace the
//! rest are cut.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use kakehashi_transport::limit::SourceLimits;
use kakehashi_transport::serve::{Caps, Refused, Service};
use kakehashi_transport::{BoxIo, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::router::router;
use crate::state::{PeerAddr, PortalState};

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest buffered request head.
const MAX_HEAD: usize = 16 * 1024;

/// Serves the portal on `listener` until `shutdown` drains: HTTPS with
/// `tls`, or plain HTTP when `tls` is `None` (`insecure_http`, loopback
/// only). Open connections are the shutdown's work: they get its grace
/// period to finish their requests.
pub async fn serve(
    state: PortalState,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
) {
    // The dashboard's history and BCP banner are sampled while the portal serves.
    if let Some(relay) = state.inner.ops.gateway.clone() {
        shutdown.spawn(crate::dashboard::sampler(state.clone(), relay));
    }
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "Portal listener has no address");
            return;
        }
    };
    let limits = state.inner.limits;
    info!(
        addr = %local,
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        max_per_source = limits.max_connections_per_source,
        "Portal listening"
    );
    let caps = Caps {
        connections: SourceLimits::new(limits.max_connections, limits.max_connections_per_source),
        handshakes: None,
        busy: None,
    };
    shutdown.spawn(maintenance(state.clone(), shutdown.clone()));
    let service = Arc::new(Portal {
        app: router(state.clone()),
        acceptor: tls.map(tokio_rustls::TlsAcceptor::from),
        limits,
        shutdown: shutdown.clone(),
        refused_logged: Mutex::new(None),
    });
    kakehashi_transport::serve::serve(listener, caps, HANDSHAKE_TIMEOUT, service, shutdown).await;
    info!("Portal stopped accepting");
}

/// The portal as a service of the one accept loop.
struct Portal {
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: crate::config::PortalLimits,
    shutdown: Shutdown,
    /// When a refusal was last logged.
    refused_logged: Mutex<Option<Instant>>,
}

impl Service for Portal {
    type Conn = TcpStream;
    type Ready = BoxIo;

    fn span(&self, _: SocketAddr) -> tracing::Span {
        tracing::Span::current()
    }

    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<BoxIo> {
        let _ = tcp.set_nodelay(true);
        match &self.acceptor {
            None => Some(Box::new(tcp)),
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(s) => Some(Box::new(s)),
                Err(e) => {
                    debug!(%peer, error = %e, "Portal TLS handshake failed");
                    None
                }
            },
        }
    }

    fn timed_out(&self, peer: SocketAddr) {
        debug!(%peer, "Portal TLS handshake timed out");
    }

    fn refused(&self, peer: SocketAddr, why: Refused) {
        // One line a minute at most: the flood itself must not fill the log.
        let mut last = self
            .refused_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            let cap = match why {
                Refused::Connections(o) | Refused::Handshakes(o) => o.as_str(),
                Refused::Busy => "busy",
            };
            warn!(source = %peer.ip(), cap, "Portal connection refused: cap reached");
        }
    }

    async fn serve(&self, io: BoxIo, peer: SocketAddr) {
        let _work = self.shutdown.work();
        connection(io, peer, self.app.clone(), self.limits, &self.shutdown).await
    }
}

/// How often the throttle's summaries are written and old lockout
/// counters pruned.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Writes the audit throttle's finished summaries and prunes lockout
/// counters that hold nothing; at shutdown writes every open summary.
async fn maintenance(state: PortalState, stop: Shutdown) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.draining() => break,
            _ = tick.tick() => {}
        }
        state.flush_audit_throttle(false).await;
        let now = state.now();
        // A counter whose window and lock are both over counts nothing.
        let keep = state
            .inner
            .rule
            .window_secs
            .max(state.inner.rule.lockout_secs);
        match state.store().prune_lockouts(now, now - keep).await {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "Old lockout counters pruned"),
            Err(e) => warn!(error = %format!("{e:#}"), "Cannot prune lockout counters"),
        }
    }
    state.flush_audit_throttle(true).await;
}

/// Serves one connection with hyper until it closes, idles out or (after
/// `stop` and the request in progress) shuts down.
async fn connection(
    io: BoxIo,
    peer: SocketAddr,
    app: Router,
    limits: crate::config::PortalLimits,
    stop: &Shutdown,
) {
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Activity {
        inner: io,
        started,
        last: last.clone(),
    };
    let svc = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
        req
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let conn = http.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(limits.idle_timeout.min(Duration::from_secs(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "Portal connection ended with an error");
                }
                return;
            }
            _ = stop.draining(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = millis_since(started);
                if now.saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                    debug!(%peer, "Portal connection closed: idle");
                    return;
                }
            }
        }
    }
}

fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection that notes when bytes last moved either way.
struct Activity<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        self.last
            .store(millis_since(self.started), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
