//! Dialling the gateway: DNS, TCP + TLS, QUIC, each under a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::server_name;
use crate::tune_tcp;

/// Resolve `host:port` to its first address.
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

/// TCP connect and TLS handshake, both within `timeout`.
pub async fn tls_connect(
    addr: &str,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
    timeout: Duration,
    keepalive: Duration,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let sni = server_name(name)?;
    let fut = async {
        let tcp = TcpStream::connect(resolve(addr).await?)
            .await
            .with_context(|| format!("cannot connect to {addr} (TCP)"))?;
        tune_tcp(&tcp, keepalive);
        TlsConnector::from(cfg)
            .connect(sni, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} failed"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("no TLS connection to {addr} within {timeout:?}"))?
}

/// QUIC handshake within `timeout`.
pub async fn quic_connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<quinn::Connection> {
    let connecting = ep
        .connect(addr, name)
        .with_context(|| format!("cannot start QUIC to {addr}"))?;
    quic_handshake(connecting, addr, timeout).await
}

/// The handshake of a QUIC connection already started (by [`quic_connect`],
/// or with a per-connection config), within `timeout`.
///
/// There is deliberately no shorter wait for the server's first answer: a
/// gateway busy with a reconnect storm answers late, and dialers that gave
/// up early and retried left it working on handshakes nobody waited for
/// (measured: 130,000 abandoned attempts and a minute to recover with 20,000
/// agents, benches/RESULTS.md P7).
pub async fn quic_handshake(
    connecting: quinn::Connecting,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<quinn::Connection> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r.with_context(|| format!("QUIC handshake with {addr} failed")),
        Err(_) => Err(anyhow!(
            "no QUIC answer from {addr} within {timeout:?} (UDP blocked?)"
        )),
    }
}
