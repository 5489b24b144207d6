//! Agent configuration: a TOML file validated into [`Config`]. Durations
//! are written with their unit (`connect_timeout = "5s"`, `crl_grace =
//! "72h"`); keys of the earlier layout are refused with their new names
//! ([`RENAMED`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_config::{duration, DurationKey, Renamed};
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

/// Where `[rdp]`'s two files come from, for the errors that name them.
const RDP_FILES: &str = "RDP サーバ自身の証明書と秘密鍵 (PEM) が必要です / the local RDP server's own certificate and private key (PEM), e.g. /etc/xrdp/cert.pem and /etc/xrdp/key.pem for xrdp, or the certificate set on the Windows Remote Desktop listener with its key (admin guide, section 13.2)";

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
    /// How long a CRL past its `nextUpdate` is still trusted; after it the
    /// agent connects to no gateway (`crl_stale`) until the current CRL is
    /// installed.
    #[serde(default = "default_crl_grace", deserialize_with = "duration")]
    pub crl_grace: Duration,
}

fn default_crl_grace() -> Duration {
    kakehashi_transport::crl::DEFAULT_GRACE
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
    /// Time allowed to connect to it.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[reconnect]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    /// First delay after a lost tunnel.
    #[serde(deserialize_with = "duration")]
    pub initial_delay: Duration,
    /// Largest delay.
    #[serde(deserialize_with = "duration")]
    pub max_delay: Duration,
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
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
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

/// Keys of the earlier layout (numbers with their unit in the key's name),
/// and their new names.
pub const RENAMED: &[Renamed] = &[
    Renamed::duration(("tls", "crl_grace_hours"), ("tls", "crl_grace"), "h", "72h"),
    Renamed::duration(
        ("target", "connect_timeout_secs"),
        ("target", "connect_timeout"),
        "s",
        "5s",
    ),
    Renamed::duration(
        ("reconnect", "initial_ms"),
        ("reconnect", "initial_delay"),
        "ms",
        "500ms",
    ),
    Renamed::duration(
        ("reconnect", "max_ms"),
        ("reconnect", "max_delay"),
        "ms",
        "30s",
    ),
];

impl ConfigFile {
    /// Parse a file's text; keys of the earlier layout are refused with
    /// their new names ([`RENAMED`]).
    pub fn parse(text: &str) -> Result<Self, kakehashi_config::Error> {
        kakehashi_config::parse(text, RENAMED)
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
        let file = ConfigFile::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Self::from_file(file, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("invalid config file {}", path.display()))
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
        let target_timeout = DurationKey::new("target", "connect_timeout", "5s")
            .at_least(f.target.connect_timeout, Duration::from_secs(1))?;
        let backoff_initial = DurationKey::new("reconnect", "initial_delay", "500ms")
            .at_least(f.reconnect.initial_delay, Duration::from_millis(1))?;
        if f.reconnect.max_delay < backoff_initial {
            bail!(
                "[reconnect] max_delay = \"{}\" must be at least initial_delay = \"{}\" (for example initial_delay = \"500ms\" and max_delay = \"30s\")",
                kakehashi_config::fmt_duration(f.reconnect.max_delay),
                kakehashi_config::fmt_duration(backoff_initial),
            );
        }
        let backoff_max = f.reconnect.max_delay;
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
                let chain = kakehashi_transport::tls::load_certs(&cert).with_context(|| {
                    format!(
                        "[rdp] server_cert = {:?}: {RDP_FILES}",
                        cert.display().to_string()
                    )
                })?;
                let key = kakehashi_transport::tls::load_key(&key).with_context(|| {
                    format!(
                        "[rdp] server_key = {:?}: {RDP_FILES}",
                        key.display().to_string()
                    )
                })?;
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
            crl_grace: f.tls.crl_grace,
            ticket_keys,
            gateways,
            target: f.target.address,
            target_timeout,
            backoff_initial,
            backoff_max,
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
        ConfigFile::parse(&format!(
            "[tls]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             [tickets]\npublic_keys = []\n[[gateways]]\naddress = \"gw:8443\"\n\
             [target]\naddress = \"127.0.0.1:3389\"\n{rdp}"
        ))
        .unwrap()
    }

    /// The shipped example parses, lists every section, and shows the defaults.
    #[test]
    fn deploy_example_parses_with_the_defaults() {
        let f = ConfigFile::parse(include_str!("../../deploy/agent.example.toml"))
            .expect("deploy/agent.example.toml parses");
        assert_eq!(f.tls.crl_grace, default_crl_grace());
        assert_eq!(f.target.connect_timeout, default_connect_timeout());
        let d = ReconnectSection::default();
        assert_eq!(
            (f.reconnect.initial_delay, f.reconnect.max_delay),
            (d.initial_delay, d.max_delay)
        );
        assert_eq!(
            f.limits.quic_session_streams,
            LimitsSection::default().quic_session_streams
        );
        assert!(f.rdp.is_some_and(|r| r.enforce));
        assert_eq!(f.gateways.len(), 1);
    }

    #[test]
    fn durations_take_their_unit_and_old_keys_their_new_names() {
        let f = parse("[reconnect]\ninitial_delay = \"100ms\"\nmax_delay = \"1s\"\n");
        assert_eq!(f.reconnect.initial_delay, Duration::from_millis(100));
        assert_eq!(f.reconnect.max_delay, Duration::from_secs(1));
        let old =
            "[tls]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\ncrl_grace_hours = 24\n\
             [tickets]\npublic_keys = []\n[[gateways]]\naddress = \"gw:8443\"\n\
             [target]\naddress = \"127.0.0.1:3389\"\nconnect_timeout_secs = 5\n\
             [reconnect]\ninitial_ms = 100\nmax_ms = 1000\n";
        let e = ConfigFile::parse(old).unwrap_err().to_string();
        for want in [
            "[tls] crl_grace_hours = 24 is now [tls] crl_grace = \"24h\"",
            "[target] connect_timeout_secs = 5 is now [target] connect_timeout = \"5s\"",
            "[reconnect] initial_ms = 100 is now [reconnect] initial_delay = \"100ms\"",
            "[reconnect] max_ms = 1000 is now [reconnect] max_delay = \"1s\"",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let new = old
            .replace("crl_grace_hours = 24", "crl_grace = 24")
            .replace("connect_timeout_secs = 5", "connect_timeout = \"5s\"")
            .replace("initial_ms = 100", "initial_delay = \"100ms\"")
            .replace("max_ms = 1000", "max_delay = \"1s\"");
        let e = ConfigFile::parse(&new).unwrap_err().to_string();
        assert!(e.contains("write \"24s\""), "{e}");
    }

    #[test]
    fn duration_ranges_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = kakehashi_pki::CaDir::init(&dir.path().join("pki"), &Default::default()).unwrap();
        let check = |extra: &str| {
            let mut f = parse(&format!("{extra}[rdp]\nenforce = false\n"));
            f.tickets.public_keys = vec![ca.ticket_public_path()];
            Config::from_file(f, dir.path()).map_err(|e| format!("{e:#}"))
        };
        let c = check("").unwrap();
        assert_eq!(c.target_timeout, Duration::from_secs(5));
        assert_eq!(c.crl_grace, Duration::from_secs(72 * 3600));
        let e = check("[reconnect]\ninitial_delay = \"0s\"\n").unwrap_err();
        assert!(
            e.contains(
                "[reconnect] initial_delay = \"0s\" is out of range: it must be at least \"1ms\""
            ),
            "{e}"
        );
        let e = check("[reconnect]\ninitial_delay = \"2s\"\nmax_delay = \"1s\"\n").unwrap_err();
        assert!(
            e.contains("max_delay = \"1s\" must be at least initial_delay = \"2s\""),
            "{e}"
        );
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
        // A missing file is named with its key and where such files come from.
        let e = format!(
            "{:#}",
            with_key("[rdp]\nserver_cert = \"missing.crt\"\nserver_key = \"missing.key\"\n")
                .unwrap_err()
        );
        assert!(
            e.contains("[rdp] server_cert = ") && e.contains("missing.crt"),
            "{e}"
        );
        assert!(e.contains("/etc/xrdp/cert.pem"), "{e}");
    }
}
