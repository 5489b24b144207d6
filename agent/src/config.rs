//! Agent configuration: a TOML file validated into [`Config`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_transport::TransportChoice;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Certificates and keys.
    pub tls: TlsSection,
    /// Keys that sign session tickets.
    pub tickets: TicketsSection,
    /// Gateways to dial (all of them, always).
    pub gateways: Vec<GatewaySection>,
    /// The desk's local service sessions are connected to.
    pub target: TargetSection,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The RDP channel filter; without this section sessions are passed through
    /// uninspected (and session controls are not enforced).
    pub rdp: Option<RdpSection>,
}

/// `[rdp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdpSection {
    /// The certificate the local RDP server presents (PEM), the same file: the
    /// agent presents it to RDP clients and accepts only it from the server.
    pub server_cert: PathBuf,
    /// The RDP server's private key (PEM).
    pub server_key: PathBuf,
    /// Enforce the ticket's session controls (default true). `false` passes
    /// sessions through uninspected, as without the section.
    #[serde(default = "default_true")]
    pub enforce: bool,
}

fn default_true() -> bool {
    true
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The CA that issued the gateway certificates (pinned: no other CA is trusted).
    pub ca: PathBuf,
    /// The agent's certificate (carries the desk id).
    pub cert: PathBuf,
    /// The agent's private key.
    pub key: PathBuf,
    /// CRL to check gateway certificates against.
    pub crl: Option<PathBuf>,
}

/// `[tickets]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketsSection {
    /// Files holding `ed25519:<base64>` public keys (several during a key rotation).
    pub public_keys: Vec<PathBuf>,
}

/// `[[gateways]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// `host:port` of the gateway's agent listener (TCP, and QUIC unless `quic_address` is set).
    pub address: String,
    /// `host:port` for QUIC when it differs.
    pub quic_address: Option<String>,
    /// Name in the gateway certificate (default: the host part of `address`).
    pub server_name: Option<String>,
    /// `auto` (QUIC, falling back to TCP), `quic` or `tcp`.
    #[serde(default)]
    pub transport: Option<String>,
}

/// `[target]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `host:port` of the local service (the RDP server, usually 127.0.0.1:3389).
    pub address: String,
    /// Seconds allowed to connect to it.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    5
}

/// `[reconnect]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    /// First delay after a lost tunnel, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Sessions one gateway may have open to this desk at once over a QUIC
    /// tunnel (each session is a stream the gateway opens); a gateway at the
    /// limit waits for a session to end. Costs the agent about 85 bytes per
    /// allowed stream and gateway. A TCP tunnel has no such limit.
    pub quic_session_streams: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            quic_session_streams: kakehashi_transport::quic::AGENT_SESSION_STREAMS,
        }
    }
}

impl Default for ReconnectSection {
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

/// One gateway to dial.
#[derive(Debug, Clone)]
pub struct GatewayTarget {
    /// TCP `host:port`.
    pub tcp: String,
    /// QUIC `host:port`.
    pub quic: String,
    /// TLS server name.
    pub server_name: String,
    /// Transport choice.
    pub transport: TransportChoice,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// CA certificate.
    pub ca: PathBuf,
    /// Agent certificate.
    pub cert: PathBuf,
    /// Agent key.
    pub key: PathBuf,
    /// CRL.
    pub crl: Option<PathBuf>,
    /// Ticket public keys.
    pub ticket_keys: Vec<[u8; 32]>,
    /// Gateways.
    pub gateways: Vec<GatewayTarget>,
    /// Local service.
    pub target: String,
    /// Connect timeout for the local service.
    pub target_timeout: Duration,
    /// Backoff start.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Concurrent session streams a gateway may open on a QUIC tunnel.
    pub quic_session_streams: u32,
    /// The RDP filter's key material; `None`: sessions pass uninspected.
    pub rdp: Option<RdpConfig>,
}

/// The RDP server's certificate and key, loaded (`[rdp]` with `enforce = true`).
#[derive(Clone)]
pub struct RdpConfig {
    /// The RDP server's certificate chain (end entity first).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for RdpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdpConfig")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The host part of `host:port` (brackets removed for IPv6).
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

impl Config {
    /// Read and validate a file. Relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Self::from_file(file, path.parent().unwrap_or(Path::new(".")))
    }

    /// Validate a parsed file.
    pub fn from_file(f: ConfigFile, base: &Path) -> anyhow::Result<Self> {
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if f.gateways.is_empty() {
            bail!("at least one [[gateways]] entry is needed");
        }
        if f.tickets.public_keys.is_empty() {
            bail!("[tickets] public_keys must list at least one key file");
        }
        let mut ticket_keys = Vec::new();
        for p in f.tickets.public_keys {
            let p = rel(p);
            ticket_keys.push(
                kakehashi_pki::load_ticket_public_key(&p)
                    .with_context(|| format!("cannot load ticket public key {}", p.display()))?,
            );
        }
        let mut gateways = Vec::new();
        for g in f.gateways {
            let transport = match g.transport.as_deref() {
                None => TransportChoice::Auto,
                Some(t) => t.parse().map_err(anyhow::Error::msg)?,
            };
            gateways.push(GatewayTarget {
                server_name: g.server_name.unwrap_or_else(|| host_of(&g.address)),
                quic: g.quic_address.unwrap_or_else(|| g.address.clone()),
                tcp: g.address,
                transport,
            });
        }
        if f.target.connect_timeout_secs == 0 {
            bail!("[target] connect_timeout_secs must be at least 1");
        }
        if f.reconnect.initial_ms == 0 || f.reconnect.max_ms < f.reconnect.initial_ms {
            bail!("[reconnect] needs 0 < initial_ms <= max_ms");
        }
        if f.limits.quic_session_streams == 0 {
            bail!("[limits] quic_session_streams must be at least 1");
        }
        let rdp = match f.rdp {
            Some(r) if r.enforce => {
                let (cert, key) = (rel(r.server_cert), rel(r.server_key));
                let chain = kakehashi_transport::tls::load_certs(&cert)?;
                let key = kakehashi_transport::tls::load_key(&key)?;
                // Fail at start, not at the first session, when the pair does not match.
                crate::rdp::check_key_pair(&chain, &key)
                    .with_context(|| format!("[rdp] server_key does not fit {}", cert.display()))?;
                Some(RdpConfig {
                    chain,
                    key: Arc::new(key),
                })
            }
            _ => None,
        };
        Ok(Self {
            ca: rel(f.tls.ca),
            cert: rel(f.tls.cert),
            key: rel(f.tls.key),
            crl: f.tls.crl.map(rel),
            ticket_keys,
            gateways,
            target: f.target.address,
            target_timeout: Duration::from_secs(f.target.connect_timeout_secs),
            backoff_initial: Duration::from_millis(f.reconnect.initial_ms),
            backoff_max: Duration::from_millis(f.reconnect.max_ms),
            handshake_timeout: Duration::from_secs(10),
            quic_session_streams: f.limits.quic_session_streams,
            rdp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part() {
        assert_eq!(host_of("gw.example.lg.jp:8443"), "gw.example.lg.jp");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
    }
}
