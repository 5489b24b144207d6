//! The relay's validated settings. The gateway's configuration file (TOML,
//! `kakehashi-gateway`'s `config.rs`) is parsed there and hands the relay
//! this part.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the relay needs: certificates, listeners, limits, time-outs, logins and the policy.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateway name.
    pub name: String,
    /// CA certificate.
    pub ca: PathBuf,
    /// Gateway certificate.
    pub cert: PathBuf,
    /// Gateway key.
    pub key: PathBuf,
    /// CRL file.
    pub crl: Option<PathBuf>,
    /// How long a CRL past its `nextUpdate` is still trusted.
    pub crl_grace: Duration,
    /// Ticket signing key.
    pub ticket_key: PathBuf,
    /// TLS resumption key file, and whether it was set explicitly.
    pub resumption_keys: (PathBuf, bool),
    /// Terminal QUIC address.
    pub terminal_quic: Option<SocketAddr>,
    /// Terminal TCP address.
    pub terminal_tcp: Option<SocketAddr>,
    /// Terminal connection cap.
    pub terminal_max_connections: usize,
    /// Terminal handshakes in progress per source address.
    pub terminal_handshakes_per_source: usize,
    /// Terminal QUIC handshakes in progress above which unvalidated peers get a Retry.
    pub terminal_quic_retry_above: usize,
    /// Load balancers whose TLS/TCP connections start with a PROXY protocol
    /// v2 header naming the client (`[relay] proxy_protocol_from`); empty:
    /// none, and a PROXY header from anyone is refused.
    pub proxy_protocol_from: kakehashi_transport::proxy::Balancers,
    /// Agent QUIC address.
    pub agent_quic: Option<SocketAddr>,
    /// Agent TCP address.
    pub agent_tcp: Option<SocketAddr>,
    /// Agent connection cap.
    pub agent_max_connections: usize,
    /// Agent handshakes in progress per source address.
    pub agent_handshakes_per_source: usize,
    /// Agent QUIC handshakes in progress above which unvalidated peers get a Retry.
    pub agent_quic_retry_above: usize,
    /// Where laptops reach this gateway (`host:port`), as told to the
    /// cluster; empty: the bound terminal addresses.
    pub advertise_terminals: Vec<String>,
    /// Where agents reach this gateway (`host:port`), as told to the
    /// cluster and through it the agents; empty: the bound agent addresses.
    pub advertise_agents: Vec<String>,
    /// Session cap.
    pub max_sessions: usize,
    /// Concurrent QUIC streams per laptop connection.
    pub terminal_quic_streams: u32,
    /// The gateway-wide budget of bytes in flight, in bytes: new sessions
    /// are refused with `gateway_busy` when their share does not fit.
    pub memory_budget: u64,
    /// Scheduling delay (mean over a second) above which new sessions are
    /// refused with `gateway_busy`; zero: the rule is off.
    pub busy_delay: Duration,
    /// CPU in use (percent of what the gateway may use, mean over a
    /// second) at which new sessions are refused with `gateway_busy`; zero:
    /// the rule is off.
    pub busy_cpu_percent: u32,
    /// Agents per second taken back after a restart: the `restarting`
    /// notice spreads their return over agents / this; zero: no spreading.
    pub agent_return_rate: u32,
    /// Send and receive window of each of the gateway's QUIC connections,
    /// in bytes (a stream's receive window too).
    pub quic_window: u32,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Session setup timeout.
    pub session_setup_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Identity settings.
    pub identity: Identity,
    /// Policy file imported at start.
    pub policy_file: Option<PathBuf>,
    /// Change-watch interval.
    pub policy_watch: Duration,
    /// Tests only (`[testing] relay_without_policy`): no store, no policy.
    pub relay_without_policy: bool,
    /// Tests only (`[testing] controls`): controls for every ticket of a bare
    /// relay; `None` = deny all.
    pub testing_controls: Option<kakehashi_proto::Controls>,
    /// Tests only (`[testing] non_rdp_desks`): a bare relay counts every desk
    /// as a non-RDP service.
    pub testing_non_rdp_desks: bool,
    /// Tests only (`[testing] policy_minute`): seconds per policy minute.
    pub testing_minute_secs: Option<u64>,
}

/// Validated `[identity]`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Sessions need a login token.
    pub require_login: bool,
    /// Token lifetime cap.
    pub token_lifetime: Duration,
    /// Lockout rule: failures.
    pub max_failures: u32,
    /// Lockout rule: counting window.
    pub failure_window: Duration,
    /// Lockout rule: duration.
    pub lockout: Duration,
    /// Enrollment code lifetime.
    pub enrollment_code_lifetime: Duration,
    /// Attestation CA files; empty = any authenticator with user verification.
    pub attestation_ca: Vec<PathBuf>,
    /// Local UTC offset in seconds.
    pub utc_offset_secs: i32,
}
