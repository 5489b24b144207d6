//! quinn endpoints with the limits every Kakehashi QUIC connection has.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};
use tracing::debug;

/// Concurrent streams the gateway lets one laptop open on its QUIC
/// connection by default: a laptop runs a handful of sessions at once (one
/// per desk) plus the short reachability probe; 14 are always available
/// (see [`QuicLimits::max_streams`] for why, and for what a larger value costs).
pub const TERMINAL_STREAMS: u32 = 16;

/// Concurrent session streams an agent lets one gateway open on its tunnel
/// by default. Every session to the desk is a stream the gateway opens on
/// the agent's one connection, so this stays high; the cost is on the
/// agent's side (one connection per gateway), not the gateway's.
pub const AGENT_SESSION_STREAMS: u32 = 4096;

/// `SO_RCVBUF` and `SO_SNDBUF` requested for every QUIC socket. One socket
/// serves every connection of an endpoint, so a burst of handshakes (a login
/// storm, agents reconnecting after a restart) lands in one kernel queue; the
/// default (`net.core.rmem_default`, 208 KiB on most distributions) drops
/// datagrams and costs a QUIC retransmission timeout each. The kernel grants
/// at most `net.core.rmem_max` / `wmem_max` (see `deploy/sysctl`). This is
/// kernel memory, used only while datagrams wait, and per socket: it does
/// not grow with connections or sessions.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Per-connection QUIC limits.
#[derive(Debug, Clone, Copy)]
pub struct QuicLimits {
    /// Concurrent bidirectional streams the *peer* may open on this
    /// connection (unidirectional streams: none). quinn holds state for
    /// every stream the peer may open from the handshake on, in use or not
    /// (two hash-map entries, about 85 bytes per stream), so this is sized to
    /// what the peer needs: 1,024 cost 86 KiB per idle connection. A peer at
    /// the limit waits for one of its streams to close before opening another.
    /// quinn hands the streams of closed ones back in steps of more than 1/8
    /// of the limit, so a peer can count on `max_streams - max_streams / 8`
    /// open at once (14 of 16), not always on all of them.
    pub max_streams: u32,
    /// Keepalive interval: a connection that sent nothing for this long
    /// sends a PING ([`crate::KEEPALIVE`] by default).
    pub keepalive: Duration,
    /// Idle timeout after which a silent connection is dropped
    /// ([`crate::IDLE_TIMEOUT`] by default). QUIC uses the shorter of the
    /// two peers' values, so an agent or laptop finds a dead gateway within
    /// its own idle timeout whatever the gateway's configuration says.
    pub idle_timeout: Duration,
    /// Per-stream receive window: the most one session buffers unread.
    pub stream_window: u32,
    /// Per-connection receive window (and send window): the most all
    /// streams of the connection buffer together, whatever `max_streams` ×
    /// `stream_window` comes to. Neither window is allocated up front.
    pub conn_window: u32,
}

impl Default for QuicLimits {
    /// Limits of a connection whose peer opens no streams (the laptop's side:
    /// the gateway never opens a stream to a laptop). Set `max_streams` where
    /// the peer does open streams.
    fn default() -> Self {
        Self {
            max_streams: 0,
            keepalive: crate::KEEPALIVE,
            idle_timeout: crate::IDLE_TIMEOUT,
            stream_window: 1024 * 1024,
            conn_window: 8 * 1024 * 1024,
        }
    }
}

impl QuicLimits {
    /// The most one connection with these limits buffers in this process
    /// for its streams: data written and not yet acknowledged by the peer
    /// (quinn's send window, `conn_window`) plus data received and not yet
    /// read (the connection's receive window, also `conn_window`; a stream's
    /// window is within it). Datagrams queued to the connection carry at
    /// most what those windows let the peer send, plus acknowledgements.
    pub fn most_held(&self) -> u64 {
        2 * u64::from(self.conn_window)
    }

    /// The quinn transport configuration for these limits.
    pub fn transport(&self) -> Arc<TransportConfig> {
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

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] requested for
/// both buffers (dual-stack when `addr` is an IPv6 wildcard).
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        if let Err(e) = s.set_only_v6(false) {
            debug!(error = %e, "Cannot make the UDP socket dual-stack");
        }
    }
    // Failing to enlarge a buffer is not fatal: the socket still works with
    // the kernel's default, and the sizes granted are logged below.
    let _ = s.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(UDP_BUFFER_BYTES);
    s.bind(&addr.into())?;
    // Linux reports twice the size it set (the doubling covers its
    // bookkeeping); halve it to compare with the request.
    let set = |r: std::io::Result<usize>| {
        let v = r.unwrap_or(0);
        if cfg!(target_os = "linux") {
            v / 2
        } else {
            v
        }
    };
    debug!(
        local = %s.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr),
        requested = UDP_BUFFER_BYTES,
        recv_granted = set(s.recv_buffer_size()),
        send_granted = set(s.send_buffer_size()),
        "QUIC socket buffers"
    );
    Ok(s.into())
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    config: quinn::EndpointConfig,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        config,
        server,
        udp_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// The key a server endpoint makes its stateless reset tokens with: the
/// token it gives a peer for each connection id, and the one it sends back
/// when a packet arrives for a connection it does not know.
///
/// A gateway killed with SIGKILL (or that lost power) closes none of its
/// QUIC connections. Started again on the same port with a *random* key, it
/// answers its old peers' packets with resets they cannot recognise, so an
/// agent or a laptop waits out its idle timeout before it dials again.
/// Derived from a secret kept on disk ([`ResetKey::derive`]), the key is the
/// same after a restart, and a peer's next packet (an agent's keepalive)
/// ends its dead connection at once. Anyone holding the key can end any
/// connection of the endpoint: derive it from a secret file only the
/// gateway reads.
pub struct ResetKey {
    hmac: ring::hmac::Key,
    /// Key of the connection ids the endpoint issues: a packet for an id it
    /// did not issue is dropped without a reset, so the ids must be
    /// recognised after a restart too.
    cid: u64,
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetKey {
    /// A key of this process only (tests; and what quinn does by default).
    pub fn random() -> Self {
        use ring::rand::SecureRandom as _;
        let rng = ring::rand::SystemRandom::new();
        let mut cid = [0u8; 8];
        rng.fill(&mut cid).expect("system random");
        Self {
            hmac: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("system random"),
            cid: u64::from_le_bytes(cid),
        }
    }

    /// The key derived from `secret` (HKDF-SHA256 with a label of its own,
    /// so the secret's other use is unaffected): the same secret gives the
    /// same key in every run.
    pub fn derive(secret: &[u8]) -> Self {
        let salt = ring::hkdf::Salt::new(
            ring::hkdf::HKDF_SHA256,
            b"kakehashi quic stateless reset v1",
        );
        let prk = salt.extract(secret);
        let hmac = prk
            .expand(&[b"reset key"], ring::hmac::HMAC_SHA256)
            .expect("one HMAC key is a valid HKDF output length")
            .into();
        let mut cid = [0u8; 8];
        prk.expand(&[b"connection id key"], CidKeyLen)
            .and_then(|okm| okm.fill(&mut cid))
            .expect("8 bytes are a valid HKDF output length");
        Self {
            hmac,
            cid: u64::from_le_bytes(cid),
        }
    }

    fn endpoint_config(self) -> quinn::EndpointConfig {
        let mut c = quinn::EndpointConfig::new(Arc::new(self.hmac));
        let cid = self.cid;
        c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid)));
        c
    }
}

/// The HKDF output length of the connection-id key.
struct CidKeyLen;

impl ring::hkdf::KeyType for CidKeyLen {
    fn len(&self) -> usize {
        8
    }
}

/// A server endpoint bound to `addr`, whose stateless resets use `reset`.
/// Clients must finish the handshake within `handshake_timeout` (enforced
/// by the caller's accept loop).
pub fn server(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    limits: QuicLimits,
    reset: ResetKey,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).context("TLS config unusable for QUIC")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(limits.transport());
    // Laptops move between networks (Wi-Fi to tethering): keep their connection.
    cfg.migration(true);
    endpoint(addr, Some(cfg), reset.endpoint_config())
        .with_context(|| format!("cannot bind QUIC (UDP) {addr}"))
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
    let mut ep = endpoint(local, None, quinn::EndpointConfig::default())
        .context("cannot open a UDP socket")?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::TestCerts;

    const ALPN: &[u8] = b"kakehashi-unit";

    async fn pair(
        server_streams: u32,
    ) -> (
        TestCerts,
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    ) {
        let certs = TestCerts::new();
        let limits = QuicLimits {
            max_streams: server_streams,
            ..QuicLimits::default()
        };
        let srv = server(
            "127.0.0.1:0".parse().unwrap(),
            certs.server(ALPN),
            limits,
            ResetKey::random(),
        )
        .unwrap();
        let addr = srv.local_addr().unwrap();
        let cli = client(certs.client(ALPN), QuicLimits::default(), addr).unwrap();
        let (c, s) = tokio::join!(
            crate::dial::quic_connect(&cli, addr, "localhost", Duration::from_secs(5)),
            async { srv.accept().await.unwrap().await.unwrap() }
        );
        (certs, srv, cli, c.unwrap(), s)
    }

    /// A server that vanished without closing its connections (SIGKILL),
    /// started again on the same port with the key derived from the same
    /// secret, ends an old connection at the peer's next packet: a
    /// stateless reset the peer recognises, not its idle timeout (a minute
    /// here). With a random key the peer could not tell the reset from noise.
    #[tokio::test]
    async fn a_server_started_again_with_the_same_secret_resets_its_old_connections() {
        let certs = TestCerts::new();
        let secret = b"contents of the gateway's ticket key file";
        let limits = QuicLimits {
            max_streams: 4,
            keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            ..QuicLimits::default()
        };
        let any = "127.0.0.1:0".parse().unwrap();
        // The old server runs on a runtime of its own, dropped without
        // running anything more: its connections send no close (a kill -9).
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server_tls = certs.server(ALPN);
        let old_thread = std::thread::spawn(move || {
            let old_rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            old_rt.block_on(async {
                let old = server(any, server_tls, limits, ResetKey::derive(secret)).unwrap();
                addr_tx.send(old.local_addr().unwrap()).unwrap();
                let conn = old.accept().await.unwrap().await.unwrap();
                // Held until the runtime is dropped.
                tokio::spawn(async move {
                    let _keep = (old, conn);
                    std::future::pending::<()>().await
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
            old_rt.shutdown_background();
        });
        let addr = addr_rx.recv().unwrap();
        let cli = client(certs.client(ALPN), limits, addr).unwrap();
        let c = crate::dial::quic_connect(&cli, addr, "localhost", Duration::from_secs(5))
            .await
            .unwrap();
        old_thread.join().unwrap();
        // A new server binds the address.
        let _new = server(addr, certs.server(ALPN), limits, ResetKey::derive(secret)).unwrap();
        // The client's next packet reaches the new server.
        let (mut send, _recv) = c.open_bi().await.unwrap();
        let _ = send.write_all(b"still there?").await;
        let e = tokio::time::timeout(Duration::from_secs(20), c.closed())
            .await
            .expect("the connection outlived its server");
        assert!(matches!(e, quinn::ConnectionError::Reset), "{e:?}");
    }

    #[test]
    fn the_reset_key_follows_the_secret_and_hides_itself() {
        let token = |k: &ResetKey| {
            ring::hmac::sign(&k.hmac, b"connection id")
                .as_ref()
                .to_vec()
        };
        assert_eq!(
            token(&ResetKey::derive(b"a")),
            token(&ResetKey::derive(b"a"))
        );
        assert_eq!(ResetKey::derive(b"a").cid, ResetKey::derive(b"a").cid);
        assert_ne!(ResetKey::derive(b"a").cid, ResetKey::derive(b"b").cid);
        assert_ne!(
            token(&ResetKey::derive(b"a")),
            token(&ResetKey::derive(b"b"))
        );
        assert_ne!(token(&ResetKey::random()), token(&ResetKey::random()));
        assert_eq!(format!("{:?}", ResetKey::derive(b"a")), "ResetKey(..)");
    }

    #[tokio::test]
    async fn peer_opens_at_most_max_streams_at_once() {
        let (_certs, _srv, _cli, c, s) = pair(2).await;
        // Each stream ends when the client ends its side.
        let server = tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = s.accept_bi().await {
                tokio::spawn(async move {
                    let _ = recv.read_to_end(1024).await;
                    let _ = send.finish();
                });
            }
        });
        let mut open = Vec::new();
        for _ in 0..2 {
            let (mut send, recv) = c.open_bi().await.unwrap();
            send.write_all(b"h").await.unwrap();
            open.push((send, recv));
        }
        // The third waits for credit.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), c.open_bi())
                .await
                .is_err(),
            "a third stream opened past the limit of 2"
        );
        // Close one (both directions): the third opens.
        let (mut send, mut recv) = open.pop().unwrap();
        send.finish().unwrap();
        recv.read_to_end(16).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.open_bi())
            .await
            .expect("a stream after one closed")
            .unwrap();
        c.close(0u32.into(), b"");
        server.abort();
    }

    /// What the 1 s keep-alive costs: a quiet connection stays up past the
    /// 4 s idle timeout on a few datagrams a second each way: a PING and an
    /// ACK of the peer's PING (2.25 a second measured on a quiet machine);
    /// on a busy one loopback's tiny round trip makes a late ACK look lost
    /// and adds a probe now and then (2.9 measured), hence a bound of 4.
    #[tokio::test]
    async fn a_quiet_connection_lives_on_a_few_datagrams_a_second() {
        let (_certs, _srv, _cli, c, s) = pair(1).await;
        // The handshake's last packets (tickets, connection ids) settle first.
        tokio::time::sleep(crate::KEEPALIVE).await;
        let sent = |c: &quinn::Connection| (c.stats().udp_tx.datagrams, c.stats().udp_tx.bytes);
        let (c0, s0) = (sent(&c), sent(&s));
        let quiet = 2 * crate::IDLE_TIMEOUT;
        tokio::time::sleep(quiet).await;
        assert!(c.close_reason().is_none() && s.close_reason().is_none());
        let secs = quiet.as_secs();
        let (c1, s1) = (sent(&c), sent(&s));
        eprintln!(
            "quiet for {secs} s: client sent {} datagrams ({} bytes), server {} ({} bytes)",
            c1.0 - c0.0,
            c1.1 - c0.1,
            s1.0 - s0.0,
            s1.1 - s0.1
        );
        for n in [c1.0 - c0.0, s1.0 - s0.0] {
            assert!(n <= 4 * secs, "{n} datagrams in {secs} s");
        }
    }

    #[tokio::test]
    async fn laptop_side_grants_the_gateway_no_streams() {
        let (_certs, _srv, _cli, _c, s) = pair(1).await;
        // The default limits (the laptop's) let the peer open none: the
        // gateway's side waits for credit that never comes.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.open_bi())
                .await
                .is_err(),
            "the gateway opened a stream to the laptop"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sockets_ask_for_large_buffers() {
        let max = |f: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{f}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let s = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let r = socket2::SockRef::from(&s);
        // Linux doubles the value it grants, capped at the sysctl maximum.
        assert_eq!(
            r.recv_buffer_size().unwrap(),
            2 * UDP_BUFFER_BYTES.min(max("rmem_max"))
        );
        assert_eq!(
            r.send_buffer_size().unwrap(),
            2 * UDP_BUFFER_BYTES.min(max("wmem_max"))
        );
    }
}
