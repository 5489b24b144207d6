//! Gateway configuration: a TOML file validated into [`Config`].
//!
//! The file is nested by component: `name` and `[tls]`, which every part
//! uses; the relay (`[relay.terminals]`, `[relay.agents]`, `[relay.limits]`,
//! with `[identity]`, `[policy]` and `[testing]`: [`relay`]); `[admin]`;
//! `[store]` ([`store`]); `[portal]` ([`portal`]); `[audit]` ([`audit`]) and
//! `[syslog]` ([`syslog`]). Durations are written with their unit
//! (`handshake_timeout = "10s"`, `watch = "250ms"`, `crl_grace = "72h"`);
//! keys of the earlier layout are refused with their new names ([`renamed`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

pub mod audit;
pub mod portal;
pub mod relay;
pub mod renamed;
pub mod store;
pub mod syslog;

pub use audit::AuditSection;
pub use portal::PortalSection;
pub use relay::{
    IdentitySection, LimitsSection, ListenerSection, PolicySection, RelaySection, TestingSection,
    TlsSection,
};
pub use store::StoreSection;
pub use syslog::SyslogSection;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Gateway name, written into tickets and logs.
    pub name: String,
    /// Certificates and keys.
    pub tls: TlsSection,
    /// Where laptops and desk agents connect, and the relay's limits and timeouts.
    pub relay: RelaySection,
    /// Login and lockout settings.
    #[serde(default)]
    pub identity: IdentitySection,
    /// The access policy (levels × terminal classes).
    #[serde(default)]
    pub policy: PolicySection,
    /// The internal admin listener (`/metrics`); off when the section is absent.
    pub admin: Option<AdminSection>,
    /// The database (users, devices, desks, tokens, audit log).
    pub store: Option<StoreSection>,
    /// The web portal (enrollment, login, "my devices"); off when absent.
    pub portal: Option<PortalSection>,
    /// The audit log's signed checkpoints (defaults when absent).
    pub audit: Option<AuditSection>,
    /// Audit log forwarding to a syslog server; off when absent.
    pub syslog: Option<SyslogSection>,
    /// Tests only: a bare relay with no store and no policy.
    pub testing: Option<TestingSection>,
}

impl ConfigFile {
    /// Parse a file's text; keys of the earlier layout are refused with
    /// their new names ([`renamed::RENAMED`]).
    pub fn parse(text: &str) -> Result<Self, kakehashi_config::Error> {
        kakehashi_config::parse(text, renamed::RENAMED)
    }
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

/// Validated configuration: the relay's part, and what the gateway around
/// it runs (the `/metrics` listener, the store, the portal, audit forwarding
/// and checkpoints).
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, certificates, limits, logins and the policy.
    pub relay: kakehashi_relay::Config,
    /// Admin listener (`/metrics`).
    pub admin: Option<SocketAddr>,
    /// Store URL (it may hold a password: it never prints it, see
    /// [`kakehashi_store::redact_url`]).
    pub store_url: Option<kakehashi_store::StoreUrl>,
    /// Portal settings.
    pub portal: Option<kakehashi_portal::PortalConfig>,
    /// `[syslog]`: forward audit records to a syslog server.
    pub syslog: Option<crate::syslog::SyslogConfig>,
    /// `[audit]`: where and how often the chain head is signed (used when
    /// there is a `[store]`).
    pub checkpoints: crate::checkpoint::CheckpointConfig,
}

impl Config {
    /// Read and validate a file. Relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        // The error may quote the line at fault: never a store password.
        let file = ConfigFile::parse(&text)
            .map_err(|e| anyhow::anyhow!(store::redact_passwords(&e.to_string())))
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base)
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Validate a parsed file.
    pub fn from_file(f: ConfigFile, base: &Path) -> anyhow::Result<Self> {
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let has_store = f.store.is_some();
        let identity = relay::identity(f.identity, has_store, &rel)?;
        let (cert, key) = (rel(f.tls.cert.clone()), rel(f.tls.key.clone()));
        let ticket_key = rel(f.tls.ticket_key.clone());
        let relay = relay::relay(
            relay::RelaySections {
                name: f.name,
                tls: f.tls,
                relay: f.relay,
                identity: identity.clone(),
                policy: f.policy,
                testing: f.testing,
            },
            &rel,
        )?;
        let portal = match f.portal {
            None => None,
            Some(p) => Some(portal::portal(
                p,
                portal::Shared {
                    cert: cert.clone(),
                    key: key.clone(),
                    identity,
                    has_store,
                },
                &rel,
            )?),
        };
        let checkpoints = audit::checkpoints(f.audit, &ticket_key, &rel)?;
        let syslog = match f.syslog {
            None => None,
            Some(s) => Some(syslog::syslog(s, has_store, (&cert, &key), &rel)?),
        };
        Ok(Self {
            relay,
            admin: f.admin.map(|a| a.listen),
            store_url: f.store.map(|s| s.url),
            portal,
            syslog,
            checkpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/gateway.example.toml");

    /// The example with `from` (which must be in it) replaced by `to`.
    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "{from:?} is not in the example");
        EXAMPLE.replacen(from, to, 1)
    }

    fn validate(text: &str) -> anyhow::Result<Config> {
        Config::from_file(ConfigFile::parse(text)?, Path::new("/etc/kakehashi"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", validate(text).unwrap_err())
    }

    /// The shipped example lists every section and stays valid.
    #[test]
    fn deploy_example_parses_and_validates() {
        let c = validate(EXAMPLE).expect("deploy/gateway.example.toml parses and validates");
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
        assert!(c.syslog.is_none(), "[syslog] is commented out");
    }

    /// The example's values are the defaults, as it says.
    #[test]
    fn the_example_shows_the_defaults() {
        let minimal =
            "name = \"gw\"\n[tls]\nca = \"ca.crt\"\ncert = \"gw.crt\"\nkey = \"gw.key\"\n\
            ticket_key = \"ticket.key\"\n[relay.terminals]\ntcp = \"0.0.0.0:443\"\n\
            [relay.agents]\ntcp = \"0.0.0.0:8443\"\n[identity]\nrequire_login = false\n";
        let (d, e) = (validate(minimal).unwrap(), validate(EXAMPLE).unwrap());
        let s = Duration::from_secs;
        for (what, default, example, want) in [
            (
                "crl_grace",
                d.relay.crl_grace,
                e.relay.crl_grace,
                s(72 * 3600),
            ),
            (
                "handshake_timeout",
                d.relay.handshake_timeout,
                e.relay.handshake_timeout,
                s(10),
            ),
            (
                "session_setup_timeout",
                d.relay.session_setup_timeout,
                e.relay.session_setup_timeout,
                s(10),
            ),
            ("keepalive", d.relay.keepalive, e.relay.keepalive, s(1)),
            (
                "idle_timeout",
                d.relay.idle_timeout,
                e.relay.idle_timeout,
                s(4),
            ),
            (
                "shutdown_grace",
                d.relay.shutdown_grace,
                e.relay.shutdown_grace,
                s(10),
            ),
            (
                "token_lifetime",
                d.relay.identity.token_lifetime,
                e.relay.identity.token_lifetime,
                s(10 * 3600),
            ),
            (
                "failure_window",
                d.relay.identity.failure_window,
                e.relay.identity.failure_window,
                s(900),
            ),
            (
                "lockout",
                d.relay.identity.lockout,
                e.relay.identity.lockout,
                s(900),
            ),
            (
                "enrollment_code_lifetime",
                d.relay.identity.enrollment_code_lifetime,
                e.relay.identity.enrollment_code_lifetime,
                s(72 * 3600),
            ),
            (
                "watch",
                d.relay.policy_watch,
                e.relay.policy_watch,
                Duration::from_millis(250),
            ),
            (
                "checkpoint_interval",
                d.checkpoints.interval,
                e.checkpoints.interval,
                s(60),
            ),
        ] {
            assert_eq!((default, example), (want, want), "{what}");
        }
        assert_eq!(
            (d.relay.memory_budget, e.relay.memory_budget),
            (4096 << 20, 4096 << 20),
            "memory_budget_mib"
        );
        assert_eq!(
            (d.relay.busy_delay, e.relay.busy_delay),
            (Duration::from_millis(20), Duration::from_millis(20)),
            "busy_delay"
        );
        assert_eq!(
            (d.relay.busy_cpu_percent, e.relay.busy_cpu_percent),
            (85, 85),
            "busy_cpu_percent"
        );
        assert_eq!(
            (d.relay.quic_window, e.relay.quic_window),
            (64 * 1024, 64 * 1024),
            "quic_window_kib"
        );
        let portal = e.portal.unwrap().limits;
        assert_eq!((portal.header_timeout, portal.idle_timeout), (s(10), s(60)));
        assert_eq!(e.relay.identity.utc_offset_secs, 9 * 3600);
    }

    #[test]
    fn durations_take_any_unit() {
        let c = validate(&example_with("watch = \"250ms\"", "watch = \"1s 500ms\"")).unwrap();
        assert_eq!(c.relay.policy_watch, Duration::from_millis(1500));
        let c = validate(&example_with(
            "token_lifetime = \"10h\"",
            "token_lifetime = \"90min\"",
        ))
        .unwrap();
        assert_eq!(c.relay.identity.token_lifetime, Duration::from_secs(5400));
    }

    #[test]
    fn a_duration_without_its_unit_says_how_to_write_it() {
        let e = error(&example_with("keepalive = \"1s\"", "keepalive = 1"));
        assert!(
            e.contains("keepalive = 1") && e.contains("write \"1s\""),
            "{e}"
        );
        let e = error(&example_with(
            "keepalive = \"1s\"",
            "keepalive = \"10 seconds please\"",
        ));
        assert!(e.contains("is not a duration"), "{e}");
    }

    #[test]
    fn range_checks_name_the_section_the_key_and_a_valid_value() {
        for (from, to, want) in [
            (
                "handshake_timeout = \"10s\"",
                "handshake_timeout = \"500ms\"",
                "[relay.limits] handshake_timeout = \"500ms\" is out of range: it must be at least \"1s\" (for example handshake_timeout = \"10s\")",
            ),
            (
                "session_setup_timeout = \"10s\"",
                "session_setup_timeout = \"0s\"",
                "[relay.limits] session_setup_timeout = \"0s\" is out of range",
            ),
            (
                "idle_timeout = \"4s\"",
                "idle_timeout = \"1s\"",
                "[relay.limits] idle_timeout = \"1s\" must be longer than keepalive = \"1s\"",
            ),
            (
                "token_lifetime = \"10h\"",
                "token_lifetime = \"25h\"",
                "[identity] token_lifetime = \"25h\" is out of range: it must be between \"1h\" and \"24h\" (for example token_lifetime = \"10h\")",
            ),
            (
                "enrollment_code_lifetime = \"72h\"",
                "enrollment_code_lifetime = \"30min\"",
                "[identity] enrollment_code_lifetime = \"30min\" is out of range: it must be at least \"1h\"",
            ),
            (
                "watch = \"250ms\"",
                "watch = \"10s\"",
                "[policy] watch = \"10s\" is out of range: it must be between \"50ms\" and \"5s\"",
            ),
            (
                "header_timeout = \"10s\"",
                "header_timeout = \"0s\"",
                "[portal] header_timeout = \"0s\" is out of range: it must be at least \"1s\"",
            ),
            (
                "checkpoint_interval = \"60s\"",
                "checkpoint_interval = \"2d\"",
                "[audit] checkpoint_interval = \"48h\" is out of range: it must be between \"1s\" and \"24h\"",
            ),
        ] {
            let e = error(&example_with(from, to));
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    /// `[relay] proxy_protocol_from`: addresses and small networks, off by default.
    #[test]
    fn proxy_protocol_from_lists_balancers_and_refuses_wide_networks() {
        let off = validate(EXAMPLE).unwrap();
        assert!(off.relay.proxy_protocol_from.is_empty());
        let on = validate(&example_with(
            "proxy_protocol_from = []",
            "proxy_protocol_from = [\"10.0.0.5\", \"10.0.1.0/29\"]",
        ))
        .unwrap();
        let b = &on.relay.proxy_protocol_from;
        assert!(b.contains("10.0.0.5".parse().unwrap()) && b.contains("10.0.1.6".parse().unwrap()));
        assert!(!b.contains("10.0.0.6".parse().unwrap()));
        for (bad, want) in [
            (
                "\"0.0.0.0/0\"",
                "[relay] proxy_protocol_from: \"0.0.0.0/0\" is too wide (at most /16)",
            ),
            (
                "\"lb1\"",
                "[relay] proxy_protocol_from: \"lb1\" is not an IP address or a network",
            ),
        ] {
            let e = error(&example_with(
                "proxy_protocol_from = []",
                &format!("proxy_protocol_from = [{bad}]"),
            ));
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// The portal serves the gateway's certificate unless `[portal] cert`
    /// and `key` name one staff browsers trust; one without the other is refused.
    #[test]
    fn the_portal_may_have_its_own_certificate() {
        let p = validate(EXAMPLE).unwrap().portal.unwrap();
        assert_eq!(p.cert, Path::new("/etc/kakehashi/gateway.crt"));
        let own = example_with(
            "#cert = \"/etc/kakehashi/portal.crt\"\n#key = \"/etc/kakehashi/portal.key\"",
            "cert = \"portal.crt\"\nkey = \"portal.key\"",
        );
        let p = validate(&own).unwrap().portal.unwrap();
        assert_eq!(p.cert, Path::new("/etc/kakehashi/portal.crt"));
        assert_eq!(p.key, Path::new("/etc/kakehashi/portal.key"));
        let half = example_with(
            "#cert = \"/etc/kakehashi/portal.crt\"",
            "cert = \"portal.crt\"",
        );
        assert!(error(&half).contains("[portal] cert and key go together"));
    }

    /// A file of the earlier layout fails with the new name and value of
    /// every old key, not with "unknown field" for the first.
    #[test]
    fn old_keys_fail_with_their_new_names() {
        let old = "name = \"gw1\"\n[tls]\nca = \"ca.crt\"\ncert = \"gw.crt\"\nkey = \"gw.key\"\n\
            crl_grace_hours = 48\nticket_key = \"ticket.key\"\n\
            [terminals]\ntcp = \"0.0.0.0:443\"\n[agents]\ntcp = \"0.0.0.0:8443\"\n\
            [limits]\nhandshake_timeout_secs = 10\nmax_sessions = 100\n\
            [identity]\ntoken_hours = 8\nlockout_secs = 900\n\
            [policy]\nwatch_ms = 250\n[audit]\nsyslog = \"udp://127.0.0.1:514\"\n";
        let e = error(old);
        for want in [
            "[terminals] is now [relay.terminals]",
            "[agents] is now [relay.agents]",
            "[limits] handshake_timeout_secs = 10 is now [relay.limits] handshake_timeout = \"10s\"",
            "[limits] is now [relay.limits]",
            "[tls] crl_grace_hours = 48 is now [tls] crl_grace = \"48h\"",
            "[identity] token_hours = 8 is now [identity] token_lifetime = \"8h\"",
            "[identity] lockout_secs = 900 is now [identity] lockout = \"15min\"",
            "[policy] watch_ms = 250 is now [policy] watch = \"250ms\"",
            "[audit] syslog is now [syslog] url = \"tls://logs.example.lg.jp:6514\"",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        // A half-changed file too.
        let e = error(&example_with("keepalive = \"1s\"", "keepalive_secs = 10"));
        assert!(
            e.contains(
                "[relay.limits] keepalive_secs = 10 is now [relay.limits] keepalive = \"10s\""
            ),
            "{e}"
        );
    }

    #[test]
    fn syslog_is_its_own_section() {
        let text =
            format!("{EXAMPLE}\n[syslog]\nurl = \"udp://127.0.0.1:514\"\nfacility = \"local3\"\n");
        let c = validate(&text).unwrap();
        let s = c.syslog.unwrap();
        assert_eq!((s.facility, s.queue), (19, 10_000));
        let e = error(&format!(
            "{EXAMPLE}\n[syslog]\nurl = \"tls://127.0.0.1:6514\"\n"
        ));
        assert!(e.contains("[syslog] url = \"tls://…\" needs ca"), "{e}");
        let e = error(&format!("{EXAMPLE}\n[syslog]\nfacility = \"local3\"\n"));
        assert!(e.contains("missing field `url`"), "{e}");
    }

    #[test]
    fn the_configuration_never_prints_the_store_password() {
        let secret = "url = \"postgres://kakehashi:s3cret@db.example/kh\"";
        let text = example_with("url = \"sqlite:///var/lib/kakehashi/kakehashi.db\"", secret);
        let f = ConfigFile::parse(&text).unwrap();
        let shown = format!("{f:?}");
        assert!(
            shown.contains("db.example") && !shown.contains("s3cret"),
            "{shown}"
        );
        let c = Config::from_file(f, Path::new("/etc/kakehashi")).unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("db.example") && !shown.contains("s3cret"),
            "{shown}"
        );
        // Nor does an error that quotes the line: a misspelt key, an unclosed string.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        for bad in [
            secret.replacen("url", "uri", 1),
            secret.trim_end_matches('"').to_string(),
        ] {
            std::fs::write(&path, text.replacen(secret, &bad, 1)).unwrap();
            let e = format!("{:#}", Config::load(&path).unwrap_err());
            assert!(e.contains("db.example") && !e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn testing_relay_needs_logins_off() {
        let e = error(&format!(
            "{EXAMPLE}\n[testing]\nrelay_without_policy = true\n"
        ));
        assert!(e.contains("require_login = false"), "{e}");
    }

    #[test]
    fn non_rdp_desks_only_on_a_bare_relay() {
        let e = error(&format!("{EXAMPLE}\n[testing]\nnon_rdp_desks = true\n"));
        assert!(e.contains("non_rdp_desks"), "{e}");
        let c = validate(EXAMPLE).unwrap();
        assert!(!c.relay.testing_non_rdp_desks);
    }

    #[test]
    fn a_policy_minute_is_whole_seconds() {
        let bare = example_with("require_login = true", "require_login = false");
        let with = |m: &str| {
            validate(&format!(
                "{bare}\n[testing]\nrelay_without_policy = true\npolicy_minute = \"{m}\"\n"
            ))
        };
        assert_eq!(with("2s").unwrap().relay.testing_minute_secs, Some(2));
        let e = format!("{:#}", with("1500ms").unwrap_err());
        assert!(e.contains("whole seconds"), "{e}");
        let e = format!("{:#}", with("2min").unwrap_err());
        assert!(e.contains("between \"1s\" and \"1min\""), "{e}");
    }
}
