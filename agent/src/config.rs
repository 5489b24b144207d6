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
    /// The RDP channel filter. Required: a file without it does not load (see
    /// [`NO_RDP_SECTION`]); pass-through is `[rdp] enforce = false`, said explicitly.
    pub rdp: Option<RdpSection>,
}

/// `[rdp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdpSection {
    /// The certificate the local RDP server presents (PEM), the same file: the
    /// agent presents it to RDP clients and accepts only it from the server.
    /// Required when `enforce` is true.
    pub server_cert: Option<PathBuf>,
    /// The RDP server's private key (PEM). Required when `enforce` is true.
    pub server_key: Option<PathBuf>,
    /// Enforce the ticket's session controls (default true). `false` is the
    /// pass-through switch: sessions go through uninspected, the agent tells
    /// the gateway it does not enforce, and the gateway refuses every session
    /// whose controls restrict anything (`desk_not_enforcing`) unless an
    /// officer registered the desk as a non-RDP service.
    #[serde(default = "default_true")]
    pub enforce: bool,
}

/// Why a configuration without `[rdp]` does not load.
pub const NO_RDP_SECTION: &str = "no [rdp] section: without it the agent would pass sessions through without enforcing their controls (clipboard, drives, printers, USB). Add [rdp] with server_cert and server_key (the local RDP server's certificate and key) to enforce them; for a desk that is not an RDP server, set [rdp] enforce = false explicitly (pass-through: the gateway then admits only sessions that restrict nothing, or to a desk an officer registered as non-RDP with `kakehashi-gateway admin desk set --service other`)";

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
    /// Hours a CRL past its `nextUpdate` is still trusted; after them the
    /// agent connects to no gateway (`crl_stale`) until the current CRL is
    /// installed.
    #[serde(default = "default_crl_grace_hours")]
    pub crl_grace_hours: u64,
}

fn default_crl_grace_hours() -> u64 {
    kakehashi_transport::crl::DEFAULT_GRACE.as_secs() / 3600
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
    /// How long a CRL past its `nextUpdate` is still trusted.
    pub crl_grace: Duration,
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
    /// The RDP filter's key material; `None`: sessions pass uninspected
    /// (`[rdp] enforce = false`), and the gateway is told so.
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
            None => bail!(NO_RDP_SECTION),
            Some(r) if r.enforce => {
                let (Some(cert), Some(key)) = (r.server_cert, r.server_key) else {
                    bail!("[rdp] needs server_cert and server_key (the local RDP server's certificate and key) to enforce session controls; for a desk that is not an RDP server set enforce = false explicitly");
                };
                let (cert, key) = (rel(cert), rel(key));
                let chain = kakehashi_transport::tls::load_certs(&cert)?;
                let key = kakehashi_transport::tls::load_key(&key)?;
                // Fail at start, not at the first session, when the pair does not match.
                kakehashi_transport::tls::check_key_pair(&chain, &key)
                    .with_context(|| format!("[rdp] server_key does not fit {}", cert.display()))?;
                Some(RdpConfig {
                    chain,
                    key: Arc::new(key),
                })
            }
            Some(_) => None,
        };
        Ok(Self {
            ca: rel(f.tls.ca),
            cert: rel(f.tls.cert),
            key: rel(f.tls.key),
            crl: f.tls.crl.map(rel),
            crl_grace: Duration::from_secs(f.tls.crl_grace_hours.saturating_mul(3600)),
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
    use super::*;

    #[test]
    fn host_part() {
        assert_eq!(host_of("gw.example.lg.jp:8443"), "gw.example.lg.jp");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
    }

    /// A parsed file with `rdp` appended; the other sections are never reached
    /// by the `[rdp]` checks that fail, so their paths need not exist.
    fn parse(rdp: &str) -> ConfigFile {
        toml::from_str(&format!(
            "[tls]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             [tickets]\npublic_keys = []\n[[gateways]]\naddress = \"gw:8443\"\n\
             [target]\naddress = \"127.0.0.1:3389\"\n{rdp}"
        ))
        .unwrap()
    }

    #[test]
    fn rdp_section_is_required_unless_pass_through_is_explicit() {
        // Loading stops at the first problem: give it a real ticket key.
        let dir = tempfile::tempdir().unwrap();
        let ca = kakehashi_pki::CaDir::init(&dir.path().join("pki"), &Default::default()).unwrap();
        let key = ca.ticket_public_path();
        let with_key = |rdp: &str| {
            let mut f = parse(rdp);
            f.tickets.public_keys = vec![key.clone()];
            Config::from_file(f, dir.path())
        };
        let e = format!("{:#}", with_key("").unwrap_err());
        assert!(e.contains("no [rdp] section"), "{e}");
        assert!(e.contains("enforce = false"), "{e}");
        let e = format!("{:#}", with_key("[rdp]\n").unwrap_err());
        assert!(e.contains("server_cert and server_key"), "{e}");
        let c = with_key("[rdp]\nenforce = false\n").unwrap();
        assert!(c.rdp.is_none());
    }
}
