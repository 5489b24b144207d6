//! quinn endpoints with the limits every Kakehashi QUIC connection has.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};

/// Per-connection QUIC limits.
#[derive(Debug, Clone, Copy)]
pub struct QuicLimits {
    /// Concurrent bidirectional streams the *peer* may open on this connection.
    pub max_streams: u32,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Idle timeout after which a silent connection is dropped.
    pub idle_timeout: Duration,
    /// Per-stream receive window: the most one session buffers unread.
    pub stream_window: u32,
    /// Per-connection receive window.
    pub conn_window: u32,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            max_streams: 256,
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            stream_window: 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
        }
    }
}

impl QuicLimits {
    fn transport(&self) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keepalive))
            .max_idle_timeout(Some(
                self.idle_timeout.try_into().expect("idle timeout in range"),
            ))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.conn_window))
            .send_window(u64::from(self.conn_window));
        Arc::new(t)
    }
}

/// A server endpoint bound to `addr`. Clients must finish the handshake
/// within `handshake_timeout` (enforced by the caller's accept loop).
pub fn server(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    limits: QuicLimits,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).context("TLS config unusable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(limits.transport());
    // Laptops move between networks (Wi-Fi to tethering): keep their connection.
    cfg.migration(true);
    quinn::Endpoint::server(cfg, addr).with_context(|| format!("cannot bind QUIC (UDP) {addr}"))
}

/// A client endpoint on an ephemeral local port.
pub fn client(
    tls: rustls::ClientConfig,
    limits: QuicLimits,
    remote: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = QuicClientConfig::try_from(tls).context("TLS config unusable for QUIC")?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(limits.transport());
    let local: SocketAddr = if remote.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut ep = quinn::Endpoint::client(local).context("cannot open a UDP socket")?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}
