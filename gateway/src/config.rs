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
    /// The database (users, devices, desks, tokens, audit log).
    pub store: Option<StoreSection>,
    /// Login and lockout settings.
    #[serde(default)]
    pub identity: IdentitySection,
    /// The web portal (enrollment, login, "my devices"); off when absent.
    pub portal: Option<PortalSection>,
    /// Audit log forwarding (syslog); off when absent.
    pub audit: Option<AuditSection>,
    /// The access policy (levels × terminal classes).
    #[serde(default)]
    pub policy: PolicySection,
    /// Tests only: a bare relay with no store and no policy.
    pub testing: Option<TestingSection>,
}

/// `[policy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// A policy file (TOML, `kakehashi-gateway policy default` prints one to
    /// start from). At start it is imported into the store, audited, when it
    /// differs from the store's current policy. Absent: the store's current
    /// policy, or the shipped default on first start.
    pub file: Option<PathBuf>,
    /// How often the gateway looks for changes (policy, devices, desks, plans,
    /// BCP) in the store and re-decides live sessions, in milliseconds.
    pub watch_ms: u64,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            file: None,
            watch_ms: 250,
        }
    }
}

/// `[testing]` — for tests only. Never set it in production.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingSection {
    /// Without logins there is no person to decide for, and every session is
    /// refused (`policy_unavailable` without a `[store]`, `login_required`
    /// with one). `true` (with `require_login = false`) turns the gateway
    /// into a bare relay for transport tests: any valid device certificate
    /// reaches any online desk; a `[store]`, if any, only keeps the audit log.
    #[serde(default)]
    pub relay_without_policy: bool,
    /// Controls put into every ticket of a bare relay instead of deny-all, e.g.
    /// `controls = { clipboard = "to-remote", drive = true }` (unset fields deny).
    pub controls: Option<kakehashi_proto::Controls>,
    /// A bare relay has no desk registry: `true` treats every desk as
    /// registered non-RDP, so sessions reach agents that do not enforce
    /// controls (transport tests against echo desks). Unset, a bare relay
    /// refuses a restricting session to such an agent (`desk_not_enforcing`).
    #[serde(default)]
    pub non_rdp_desks: bool,
    /// A policy minute (`max_duration_mins`, `idle_timeout_mins`) lasts this
    /// many seconds instead of 60, so session time limits and idle timeouts
    /// can be tested end to end in seconds.
    pub policy_minute_secs: Option<u64>,
}

/// `[store]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:///var/lib/kakehashi/kakehashi.db` (or a plain path), or `postgres://…` for a cluster.
    pub url: String,
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Refuse sessions without a valid login token bound to the laptop (needs `[store]`).
    pub require_login: bool,
    /// Longest a login token lives, in hours (it also ends at local midnight).
    pub token_hours: u32,
    /// Failed attempts (per user and per source address) before a lockout.
    pub max_failures: u32,
    /// Window in which failures are counted, in seconds.
    pub failure_window_secs: u64,
    /// Lockout duration, in seconds.
    pub lockout_secs: u64,
    /// Hours an enrollment code stays valid.
    pub enrollment_code_hours: u32,
    /// Accept only attested hardware authenticators from these CA certificates (PEM files).
    pub attestation_ca: Vec<PathBuf>,
    /// Local time zone offset in hours (Asia/Tokyo = 9), for "end of the working day".
    pub utc_offset_hours: i8,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            require_login: true,
            token_hours: 10,
            max_failures: 5,
            failure_window_secs: 900,
            lockout_secs: 900,
            enrollment_code_hours: 72,
            attestation_ca: Vec::new(),
            utc_offset_hours: 9,
        }
    }
}

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Forward every audit record to a syslog server (RFC 5424):
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` (octet-counted, RFC 6587) or
    /// `tls://HOST:PORT` (RFC 5425, needs `syslog_ca`). Needs `[store]`.
    pub syslog: Option<String>,
    /// Syslog facility name (`authpriv`, `auth`, `local0` … `local7`, …).
    #[serde(default = "default_syslog_facility")]
    pub syslog_facility: String,
    /// Records held for the syslog server while it is slow or away; beyond
    /// that they are dropped from forwarding (never from the store) and counted.
    #[serde(default = "default_syslog_queue")]
    pub syslog_queue: usize,
    /// For `tls://` (RFC 5425): the CA certificate(s) (PEM) that issued the
    /// log server's certificate. The gateway offers its own certificate
    /// when the server asks for one.
    #[serde(default)]
    pub syslog_ca: Option<PathBuf>,
    /// The Ed25519 key that signs audit checkpoints (default:
    /// `audit-checkpoint.key` beside `ticket_key`); created, mode 0600, on
    /// first start. Never in the database.
    #[serde(default)]
    pub checkpoint_key: Option<PathBuf>,
    /// The checkpoint file, appended (default: `audit-checkpoints.jsonl`
    /// beside `checkpoint_key`).
    #[serde(default)]
    pub checkpoint_log: Option<PathBuf>,
    /// Seconds between checkpoints when the chain head has moved (default 60).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_secs: u64,
}

fn default_checkpoint_interval() -> u64 {
    60
}

fn default_syslog_facility() -> String {
    "authpriv".into()
}

fn default_syslog_queue() -> usize {
    10_000
}

/// `[portal]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSection {
    /// Address of the HTTPS portal.
    pub listen: SocketAddr,
    /// WebAuthn relying-party id: the portal's host name (e.g. `gw.example.lg.jp`).
    pub rp_id: String,
    /// The exact origin browsers see (e.g. `https://gw.example.lg.jp`).
    pub origin: String,
    /// Serve plain HTTP. Allowed only on a loopback address (tests, demo);
    /// browsers treat `http://localhost` as a secure context for WebAuthn.
    #[serde(default)]
    pub insecure_http: bool,
    /// Most open portal connections in total (over it, new ones are closed at once).
    #[serde(default = "default_portal_max_connections")]
    pub max_connections: usize,
    /// Most open portal connections from one source address. Staff behind an
    /// office NAT or the LGWAN exit share one address: a browser holds up
    /// to six connections, so keep this above 6 × the staff behind one address.
    #[serde(default = "default_portal_max_per_source")]
    pub max_connections_per_source: usize,
    /// Seconds a client gets to send a request's headers (a connection that
    /// sends half a request and stops is closed after this).
    #[serde(default = "default_portal_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with nothing sent either way.
    #[serde(default = "default_portal_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// API calls (`/api/…`) per second allowed from one source address,
    /// sustained; ten seconds' worth may come at once. Over it the answer is
    /// `rate_limited` (429) and the refusals are audited as one record per
    /// minute and address.
    #[serde(default = "default_portal_api_rate")]
    pub api_rate_per_source: u32,
}

fn default_portal_max_connections() -> usize {
    16_384
}

fn default_portal_max_per_source() -> usize {
    1024
}

fn default_portal_header_timeout() -> u64 {
    10
}

fn default_portal_idle_timeout() -> u64 {
    60
}

fn default_portal_api_rate() -> u32 {
    50
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

fn default_crl_grace_hours() -> u64 {
    kakehashi_transport::crl::DEFAULT_GRACE.as_secs() / 3600
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
    /// Hours a CRL past its `nextUpdate` is still trusted; after them every
    /// laptop and agent is refused with `crl_stale` until the current CRL
    /// is installed (default 72).
    #[serde(default = "default_crl_grace_hours")]
    pub crl_grace_hours: u64,
    /// Ed25519 key that signs session tickets.
    pub ticket_key: PathBuf,
    /// File of TLS session-resumption keys, written by the gateway (default:
    /// `tls-resumption.keys` beside `ticket_key`). Peers resume their TLS
    /// sessions across a restart instead of doing full handshakes.
    pub resumption_keys: Option<PathBuf>,
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
    /// Most handshakes in progress from one source address; more are closed
    /// at once, so stalled handshakes from one address cannot take the
    /// places of authenticated peers. Laptops behind one NAT share an
    /// address, but a handshake takes milliseconds.
    #[serde(default = "default_handshakes_per_source")]
    pub handshakes_per_source: usize,
    /// With more QUIC handshakes than this in progress, a peer whose address
    /// is not yet validated must first answer a Retry (one round trip, no
    /// crypto work on our side) — spoofed sources never do.
    #[serde(default = "default_quic_retry_above")]
    pub quic_retry_above: usize,
}

fn default_max_connections() -> usize {
    25_000
}

fn default_handshakes_per_source() -> usize {
    256
}

fn default_quic_retry_above() -> usize {
    64
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
    /// Streams (sessions and reachability probes) one laptop may have open at
    /// once on its QUIC connection; a laptop over the limit waits for one of
    /// its sessions to end. Streams of ended sessions come back in steps of
    /// 1/8 of the limit, so a laptop can count on 7/8 of it. Each allowed
    /// stream costs the gateway about 85 bytes per laptop connection, used or not.
    pub terminal_quic_streams: u32,
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
            terminal_quic_streams: kakehashi_transport::quic::TERMINAL_STREAMS,
        }
    }
}

/// Validated configuration: the relay's part, and what the gateway around
/// it runs (the `/metrics` listener, the store, the portal, audit forwarding
/// and checkpoints).
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, certificates, limits, logins and the policy.
    pub relay: kakehashi_relay::Config,
    /// Admin listener (`/metrics`).
    pub admin: Option<SocketAddr>,
    /// Store URL (it may hold a password: never print it, see
    /// [`kakehashi_store::redact_url`]).
    pub store_url: Option<kakehashi_store::StoreUrl>,
    /// Portal settings.
    pub portal: Option<kakehashi_portal::PortalConfig>,
    /// `[audit] syslog`: forward audit records to a syslog server.
    pub syslog: Option<crate::syslog::SyslogConfig>,
    /// `[audit] checkpoint_*`: where and how often the chain head is signed
    /// (used when there is a `[store]`).
    pub checkpoints: crate::checkpoint::CheckpointConfig,
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
        if l.max_sessions == 0
            || l.terminal_quic_streams == 0
            || f.terminals.max_connections == 0
            || f.agents.max_connections == 0
        {
            bail!("connection, session and stream limits must be at least 1");
        }
        if l.handshake_timeout_secs == 0
            || l.session_setup_timeout_secs == 0
            || l.keepalive_secs == 0
            || l.idle_timeout_secs <= l.keepalive_secs
        {
            bail!("timeouts must be positive and idle_timeout_secs must exceed keepalive_secs");
        }
        let id = f.identity;
        if id.max_failures == 0
            || id.token_hours == 0
            || id.token_hours > 24
            || id.enrollment_code_hours == 0
        {
            bail!("[identity] needs max_failures >= 1, 1 <= token_hours <= 24, enrollment_code_hours >= 1");
        }
        if !(-12..=14).contains(&id.utc_offset_hours) {
            bail!("[identity] utc_offset_hours must be between -12 and 14");
        }
        if id.require_login && f.store.is_none() {
            bail!("[identity] require_login needs a [store] (set require_login = false to run without logins)");
        }
        let identity = kakehashi_relay::Identity {
            require_login: id.require_login,
            token_lifetime: Duration::from_secs(u64::from(id.token_hours) * 3600),
            max_failures: id.max_failures,
            failure_window: Duration::from_secs(id.failure_window_secs),
            lockout: Duration::from_secs(id.lockout_secs),
            enrollment_code_lifetime: Duration::from_secs(
                u64::from(id.enrollment_code_hours) * 3600,
            ),
            attestation_ca: id.attestation_ca.into_iter().map(rel).collect(),
            utc_offset_secs: i32::from(id.utc_offset_hours) * 3600,
        };
        if !(50..=5_000).contains(&f.policy.watch_ms) {
            bail!("[policy] watch_ms must be between 50 and 5000");
        }
        if let Some(t) = &f.testing {
            if t.relay_without_policy && identity.require_login {
                bail!("[testing] relay_without_policy needs [identity] require_login = false");
            }
            if t.non_rdp_desks && !t.relay_without_policy {
                bail!("[testing] non_rdp_desks applies only with relay_without_policy = true; with a [store] each desk's service is registered (`admin desk set --service other`)");
            }
            if t.policy_minute_secs.is_some_and(|m| !(1..=60).contains(&m)) {
                bail!("[testing] policy_minute_secs must be between 1 and 60");
            }
            if t.controls.is_some() && !t.relay_without_policy {
                bail!("[testing] controls apply only with relay_without_policy = true; with a [store] the policy decides the controls");
            }
        }
        let portal = match f.portal {
            None => None,
            Some(p) => {
                if p.insecure_http && !p.listen.ip().is_loopback() {
                    bail!(
                        "[portal] insecure_http is allowed only on a loopback address, not {}",
                        p.listen
                    );
                }
                let origin = url::Url::parse(&p.origin)
                    .with_context(|| format!("[portal] origin {:?} is not a URL", p.origin))?;
                if origin.host_str() != Some(p.rp_id.as_str())
                    && !origin
                        .host_str()
                        .is_some_and(|h| h.ends_with(&format!(".{}", p.rp_id)))
                {
                    bail!(
                        "[portal] rp_id {:?} must be the origin's host or a parent domain of it",
                        p.rp_id
                    );
                }
                if f.store.is_none() {
                    bail!("[portal] needs a [store]");
                }
                if p.max_connections == 0
                    || p.max_connections_per_source == 0
                    || p.header_timeout_secs == 0
                    || p.idle_timeout_secs == 0
                    || p.api_rate_per_source == 0
                {
                    bail!("[portal] max_connections, max_connections_per_source, header_timeout_secs, idle_timeout_secs and api_rate_per_source must be at least 1");
                }
                Some(kakehashi_portal::PortalConfig {
                    listen: p.listen,
                    rp_id: p.rp_id,
                    origin,
                    insecure_http: p.insecure_http,
                    cert: rel(f.tls.cert.clone()),
                    key: rel(f.tls.key.clone()),
                    identity: identity.clone(),
                    limits: kakehashi_portal::PortalLimits {
                        max_connections: p.max_connections,
                        max_connections_per_source: p
                            .max_connections_per_source
                            .min(p.max_connections),
                        header_timeout: Duration::from_secs(p.header_timeout_secs),
                        idle_timeout: Duration::from_secs(p.idle_timeout_secs),
                        api_rate_per_source: p.api_rate_per_source,
                    },
                })
            }
        };
        let checkpoints = {
            let a = f.audit.as_ref();
            let key = match a.and_then(|a| a.checkpoint_key.clone()) {
                Some(k) => rel(k),
                None => rel(f.tls.ticket_key.clone()).with_file_name(crate::checkpoint::KEY_FILE),
            };
            let log = match a.and_then(|a| a.checkpoint_log.clone()) {
                Some(l) => rel(l),
                None => key.with_file_name(crate::checkpoint::LOG_FILE),
            };
            let secs = a.map_or(default_checkpoint_interval(), |a| {
                a.checkpoint_interval_secs
            });
            if !(1..=86_400).contains(&secs) {
                bail!("[audit] checkpoint_interval_secs must be between 1 and 86400");
            }
            crate::checkpoint::CheckpointConfig {
                key,
                log,
                interval: Duration::from_secs(secs),
            }
        };
        let syslog = match f.audit {
            Some(AuditSection {
                syslog: Some(url),
                syslog_facility,
                syslog_queue,
                syslog_ca,
                ..
            }) => {
                if f.store.is_none() {
                    bail!("[audit] syslog needs a [store] (the records it forwards)");
                }
                let sc = crate::syslog::SyslogConfig::new(&url, &syslog_facility, syslog_queue)?;
                match (&sc.target, syslog_ca) {
                    (crate::syslog::SyslogTarget::Tls(_), Some(ca)) => Some(sc.with_tls(
                        &rel(ca),
                        &rel(f.tls.cert.clone()),
                        &rel(f.tls.key.clone()),
                    )?),
                    (crate::syslog::SyslogTarget::Tls(_), None) => {
                        bail!("[audit] syslog = \"tls://…\" needs syslog_ca (the CA certificate that issued the log server's certificate)")
                    }
                    (_, Some(_)) => bail!("[audit] syslog_ca is for tls:// only"),
                    (_, None) => Some(sc),
                }
            }
            _ => None,
        };
        let relay = kakehashi_relay::Config {
            name: f.name,
            ca: rel(f.tls.ca),
            cert: rel(f.tls.cert),
            key: rel(f.tls.key),
            crl: f.tls.crl.map(rel),
            crl_grace: Duration::from_secs(f.tls.crl_grace_hours.saturating_mul(3600)),
            resumption_keys: match f.tls.resumption_keys {
                Some(p) => (rel(p), true),
                None => (
                    rel(f.tls.ticket_key.clone())
                        .parent()
                        .map(|d| d.join("tls-resumption.keys"))
                        .unwrap_or_else(|| PathBuf::from("tls-resumption.keys")),
                    false,
                ),
            },
            ticket_key: rel(f.tls.ticket_key),
            terminal_quic: f.terminals.quic,
            terminal_tcp: f.terminals.tcp,
            terminal_max_connections: f.terminals.max_connections,
            terminal_handshakes_per_source: f.terminals.handshakes_per_source.max(1),
            terminal_quic_retry_above: f.terminals.quic_retry_above,
            agent_quic: f.agents.quic,
            agent_tcp: f.agents.tcp,
            agent_max_connections: f.agents.max_connections,
            agent_handshakes_per_source: f.agents.handshakes_per_source.max(1),
            agent_quic_retry_above: f.agents.quic_retry_above,
            max_sessions: l.max_sessions,
            terminal_quic_streams: l.terminal_quic_streams,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
            session_setup_timeout: Duration::from_secs(l.session_setup_timeout_secs),
            keepalive: Duration::from_secs(l.keepalive_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            shutdown_grace: Duration::from_secs(l.shutdown_grace_secs),
            identity,
            policy_file: f.policy.file.map(rel),
            policy_watch: Duration::from_millis(f.policy.watch_ms),
            relay_without_policy: f.testing.as_ref().is_some_and(|t| t.relay_without_policy),
            testing_non_rdp_desks: f.testing.as_ref().is_some_and(|t| t.non_rdp_desks),
            testing_minute_secs: f.testing.as_ref().and_then(|t| t.policy_minute_secs),
            testing_controls: f.testing.and_then(|t| t.controls),
        };
        Ok(Self {
            relay,
            admin: f.admin.map(|a| a.listen),
            store_url: f.store.map(|s| kakehashi_store::StoreUrl::new(s.url)),
            portal,
            syslog,
            checkpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example lists every section and stays valid.
    #[test]
    fn deploy_example_parses_and_validates() {
        let text = include_str!("../../deploy/gateway.example.toml");
        let f: ConfigFile = toml::from_str(text).expect("deploy/gateway.example.toml parses");
        let c = Config::from_file(f, Path::new("/etc/kakehashi")).expect("and validates");
        assert!(c.store_url.is_some() && c.portal.is_some() && c.admin.is_some());
        assert!(c.relay.identity.require_login && !c.relay.relay_without_policy);
        assert_eq!(
            c.checkpoints.key,
            Path::new("/var/lib/kakehashi/audit-checkpoint.key")
        );
        assert_eq!(c.checkpoints.interval, Duration::from_secs(60));
        assert_eq!(
            c.relay.policy_file.as_deref(),
            Some(Path::new("/etc/kakehashi/policy.toml"))
        );
    }

    #[test]
    fn the_configuration_never_prints_the_store_password() {
        let base = include_str!("../../deploy/gateway.example.toml");
        let at = base.find("[store]").expect("a [store] section");
        let end = base[at..].find("\n[").map_or(base.len(), |e| at + e + 1);
        let text = format!(
            "{}[store]\nurl = \"postgres://kakehashi:s3cret@db.example/kh\"\n{}",
            &base[..at],
            &base[end..]
        );
        let f: ConfigFile = toml::from_str(&text).unwrap();
        let c = Config::from_file(f, Path::new("/etc/kakehashi")).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("db.example") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn testing_relay_needs_logins_off() {
        let base = include_str!("../../deploy/gateway.example.toml");
        let text = format!("{base}\n[testing]\nrelay_without_policy = true\n");
        let f: ConfigFile = toml::from_str(&text).unwrap();
        let e = Config::from_file(f, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("require_login = false"), "{e}");
    }

    #[test]
    fn non_rdp_desks_only_on_a_bare_relay() {
        let base = include_str!("../../deploy/gateway.example.toml");
        let text = format!("{base}\n[testing]\nnon_rdp_desks = true\n");
        let f: ConfigFile = toml::from_str(&text).unwrap();
        let e = Config::from_file(f, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("non_rdp_desks"), "{e}");
        let c = Config::from_file(toml::from_str(base).unwrap(), Path::new("/")).unwrap();
        assert!(!c.relay.testing_non_rdp_desks);
    }
}
