//! Gateway configuration: a TOML file validated into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Gateway name, written into tickets and logs.
    pub name: String,
    /// Certificates and keys.
    pub tls: TlsSection,
    /// Where laptops connect.
    pub terminals: ListenerSection,
    /// Where desk agents connect.
    pub agents: ListenerSection,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The internal admin listener (`/metrics`); off when the section is absent.
    pub admin: Option<AdminSection>,
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address of the admin listener; keep it on loopback or an operations network.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificate that issued agent and device certificates.
    pub ca: PathBuf,
    /// The gateway's certificate.
    pub cert: PathBuf,
    /// The gateway's private key.
    pub key: PathBuf,
    /// CRL; reloaded when the file changes.
    pub crl: Option<PathBuf>,
    /// Ed25519 key that signs session tickets.
    pub ticket_key: PathBuf,
}

/// A listener pair.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// QUIC (UDP) address; omit to disable QUIC.
    pub quic: Option<SocketAddr>,
    /// TLS-over-TCP address; omit to disable TCP.
    pub tcp: Option<SocketAddr>,
    /// Most connections at once on this listener pair.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    25_000
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Seconds allowed for a TLS handshake and the first frame.
    pub handshake_timeout_secs: u64,
    /// Seconds allowed for the agent to answer a session (ticket check and desk connect).
    pub session_setup_timeout_secs: u64,
    /// Keepalive interval in seconds (QUIC keepalive, TCP keepalive, tunnel pings).
    pub keepalive_secs: u64,
    /// Seconds of silence after which a connection is considered dead.
    pub idle_timeout_secs: u64,
    /// Seconds live sessions may continue after a shutdown request.
    pub shutdown_grace_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_sessions: 20_000,
            handshake_timeout_secs: 10,
            session_setup_timeout_secs: 10,
            keepalive_secs: 10,
            idle_timeout_secs: 30,
            shutdown_grace_secs: 10,
        }
    }
}

/// Validated configuration.
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
    /// Ticket signing key.
    pub ticket_key: PathBuf,
    /// Terminal QUIC address.
    pub terminal_quic: Option<SocketAddr>,
    /// Terminal TCP address.
    pub terminal_tcp: Option<SocketAddr>,
    /// Terminal connection cap.
    pub terminal_max_connections: usize,
    /// Agent QUIC address.
    pub agent_quic: Option<SocketAddr>,
    /// Agent TCP address.
    pub agent_tcp: Option<SocketAddr>,
    /// Agent connection cap.
    pub agent_max_connections: usize,
    /// Session cap.
    pub max_sessions: usize,
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
    /// Admin listener (`/metrics`).
    pub admin: Option<SocketAddr>,
}

impl Config {
    /// Read and validate a file. Relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base)
    }

    /// Validate a parsed file.
    pub fn from_file(f: ConfigFile, base: &Path) -> anyhow::Result<Self> {
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if f.terminals.quic.is_none() && f.terminals.tcp.is_none() {
            bail!("[terminals] needs at least one of quic or tcp");
        }
        if f.agents.quic.is_none() && f.agents.tcp.is_none() {
            bail!("[agents] needs at least one of quic or tcp");
        }
        let l = f.limits;
        if l.max_sessions == 0 || f.terminals.max_connections == 0 || f.agents.max_connections == 0
        {
            bail!("connection and session limits must be at least 1");
        }
        if l.handshake_timeout_secs == 0
            || l.session_setup_timeout_secs == 0
            || l.keepalive_secs == 0
            || l.idle_timeout_secs <= l.keepalive_secs
        {
            bail!("timeouts must be positive and idle_timeout_secs must exceed keepalive_secs");
        }
        Ok(Self {
            name: f.name,
            ca: rel(f.tls.ca),
            cert: rel(f.tls.cert),
            key: rel(f.tls.key),
            crl: f.tls.crl.map(rel),
            ticket_key: rel(f.tls.ticket_key),
            terminal_quic: f.terminals.quic,
            terminal_tcp: f.terminals.tcp,
            terminal_max_connections: f.terminals.max_connections,
            agent_quic: f.agents.quic,
            agent_tcp: f.agents.tcp,
            agent_max_connections: f.agents.max_connections,
            max_sessions: l.max_sessions,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
            session_setup_timeout: Duration::from_secs(l.session_setup_timeout_secs),
            keepalive: Duration::from_secs(l.keepalive_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            shutdown_grace: Duration::from_secs(l.shutdown_grace_secs),
            admin: f.admin.map(|a| a.listen),
        })
    }
}
