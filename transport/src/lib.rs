//! The transport shared by the Kakehashi gateway, agent and laptop client:
//! QUIC (quinn) as the primary transport and TLS 1.3 over TCP (rustls;
//! tokio-rustls on the client side) as the fallback, both with mutual TLS
//! against the private CA and ring as the only crypto provider.
//!
//! - [`tls`]: loading PEM files, building rustls configs, a client
//!   verifier whose CRL reloads when the file changes.
//! - [`keyfile`]: refusing private-key files that others may read.
//! - [`resumption`]: TLS session-ticket keys kept on disk, so peers resume
//!   after a restart.
//! - [`quic`]: quinn endpoints with bounded windows, keepalives, idle timeouts.
//! - [`stream`]: one boxed byte-stream type for a session on either transport.
//! - [`splice`]: the bidirectional copy between two streams, holding a buffer
//!   only while bytes are in flight, so idle sessions cost no buffer memory.
//! - [`tunnel`]: a desk agent's tunnel on either transport, for the gateway's
//!   end and the agent's: control stream, session streams, pings.
//! - [`tls_stream`]: the server side of TLS over TCP, holding no buffer
//!   while a connection is idle.
//! - [`backoff`]: the one capped, jittered reconnect backoff (backon).
//! - [`explain`]: turns handshake failures into reason codes a person can act on.
//! - [`proxy`]: the PROXY protocol v2 header a load balancer puts before TLS,
//!   trusted from configured balancer addresses only.
//! - [`limit`]: connection caps per source address and in total, taken after accept.
//! - [`serve`]: the one accept loop of every listener, with its caps and handshake time-out.
//! - [`shutdown`]: the one shutdown: drain, then force after the grace period.

// Library hygiene (issue #17): every public item documented and reachable,
// no silent narrowing `as` casts. Per crate, not workspace-wide: the gateway is not ready.
#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

pub mod backoff;
pub mod crl;
pub mod dial;
pub mod explain;
pub mod keyfile;
pub mod limit;
mod pool;
pub mod proxy;
pub mod quic;
pub mod resumption;
pub mod serve;
pub mod server_cert;
pub mod shutdown;
pub mod splice;
pub mod stream;
pub mod tls;
pub mod tls_stream;
pub mod tunnel;

#[cfg(test)]
mod test_certs;

pub use shutdown::Shutdown;
pub use stream::{BoxIo, SessionIo};

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
}

impl Transport {
    /// Lowercase name, as in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport choice in configuration files and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// QUIC, falling back to TCP when UDP is blocked.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown transport {other:?} (expected auto, quic or tcp)"
            )),
        }
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How often a quiet connection proves its peer is alive, by default: the
/// QUIC keep-alive, the TCP keepalive probes and the gateway's pings on an
/// agent's TCP tunnel (the gateway's `[relay.limits] keepalive`).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Silence after which a peer counts as dead, by default: the QUIC idle
/// timeout (the gateway's `[relay.limits] idle_timeout`). With
/// [`KEEPALIVE`] a gateway whose host hangs or leaves the network is noticed
/// within 4 s by its agents and laptops, and a dead agent by the gateway.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// Unanswered TCP keepalive probes after which the kernel drops a quiet
/// connection: a dead peer is found `keepalive × (1 + TCP_KEEPALIVE_PROBES)`
/// after the last thing it sent (4 s with [`KEEPALIVE`]; the kernel's own
/// default of 9 would make it 10 s).
pub const TCP_KEEPALIVE_PROBES: u32 = 3;

/// Set TCP keepalive (first probe and interval `keepalive`, then
/// [`TCP_KEEPALIVE_PROBES`] probes) and no-delay on an accepted or dialled
/// socket. Keepalive probes only go out while the connection is quiet, and
/// only find a dead or unreachable host: a process that hangs on a live host
/// still has its kernel answer them, which the tunnels' pings (TCP) and QUIC
/// idle timeouts catch instead.
pub fn tune_tcp(stream: &tokio::net::TcpStream, keepalive: std::time::Duration) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive)
        .with_retries(TCP_KEEPALIVE_PROBES);
    if sock.set_tcp_keepalive(&ka).is_err() {
        // An older kernel without a settable probe count: time and interval.
        let ka = socket2::TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive);
        let _ = sock.set_tcp_keepalive(&ka);
    }
}

/// Start tracing for a binary: human-readable by default, JSON lines when
/// `json` is set; the level comes from `RUST_LOG` (default `info`). Logs go
/// to standard error, so standard output stays for the program's own output.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Random lowercase hex id of `bytes` random bytes (ids, channel ids).
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Resolve when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
