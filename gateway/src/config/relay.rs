//! The relay's sections: `[tls]`, `[relay.terminals]`, `[relay.agents]`,
//! `[relay.limits]`, `[identity]`, `[policy]` and `[testing]`, validated into
//! [`kakehashi_relay::Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use kakehashi_config::{duration, optional_duration, DurationKey};
use serde::Deserialize;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

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
    /// How long a CRL past its `nextUpdate` is still trusted; after it every
    /// laptop and agent is refused with `crl_stale` until the current CRL
    /// is installed (default `"72h"`).
    #[serde(default = "default_crl_grace", deserialize_with = "duration")]
    pub crl_grace: Duration,
    /// Ed25519 key that signs session tickets.
    pub ticket_key: PathBuf,
    /// File of TLS session-resumption keys, written by the gateway (default:
    /// `tls-resumption.keys` beside `ticket_key`). Peers resume their TLS
    /// sessions across a restart instead of doing full handshakes.
    pub resumption_keys: Option<PathBuf>,
}

fn default_crl_grace() -> Duration {
    kakehashi_transport::crl::DEFAULT_GRACE
}

/// `[relay]`: where laptops and agents connect, and the limits of both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// `[relay.terminals]`: where laptops connect.
    pub terminals: ListenerSection,
    /// `[relay.agents]`: where desk agents connect.
    pub agents: ListenerSection,
    /// `[relay.limits]`: limits and timeouts.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Load balancers (addresses, or networks up to /16 and /64) whose
    /// TLS/TCP connections start with a PROXY protocol v2 header naming
    /// the laptop; empty (the default): none.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
}

/// `[relay.terminals]` and `[relay.agents]`: a listener pair.
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
    /// Where the other side reaches this listener pair, as `host:port`
    /// (a DNS name or an address): what this gateway tells the cluster,
    /// and through it the agents. Needed when gateways share one database
    /// and listen on a wildcard address; default: the bound addresses.
    #[serde(default)]
    pub advertise: Vec<String>,
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

/// `[relay.limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Allowed for a TLS handshake and the first frame.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Allowed for the agent to answer a session (ticket check and desk connect).
    #[serde(deserialize_with = "duration")]
    pub session_setup_timeout: Duration,
    /// Keepalive interval (QUIC keepalive, TCP keepalive, tunnel pings).
    #[serde(deserialize_with = "duration")]
    pub keepalive: Duration,
    /// Silence after which a connection is considered dead.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// How long live sessions may continue after a shutdown request.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Streams (sessions and reachability probes) one laptop may have open at
    /// once on its QUIC connection; a laptop over the limit waits for one of
    /// its sessions to end. Streams of ended sessions come back in steps of
    /// 1/8 of the limit, so a laptop can count on 7/8 of it. Each allowed
    /// stream costs the gateway about 85 bytes per laptop connection, used or not.
    pub terminal_quic_streams: u32,
    /// Budget of bytes in flight, MiB: each session takes the most its
    /// buffers can hold (its QUIC windows, its TLS records, the relay's
    /// copy buffers); a session whose share does not fit is refused with
    /// `gateway_busy`.
    pub memory_budget_mib: u64,
    /// Scheduling delay above which new sessions are refused with
    /// `gateway_busy`: how late the gateway runs a task that is ready,
    /// averaged over a second. A gateway short of CPU slows every live
    /// session down; it stops admitting new ones instead. `"0s"` turns the
    /// rule off.
    #[serde(deserialize_with = "duration")]
    pub busy_delay: Duration,
    /// CPU in use, percent of what the gateway may use (its cores, or its
    /// cgroup's quota), averaged over a second, at which new sessions are
    /// refused with `gateway_busy`: past it, the bytes of live sessions
    /// queue. 0 turns the rule off.
    pub busy_cpu_percent: u32,
    /// Send and receive window of each of the gateway's QUIC connections,
    /// KiB: what one connection may buffer each way.
    pub quic_window_kib: u32,
    /// Agents per second this gateway takes back after a restart. When it
    /// stops on purpose it tells its agents to come back at random moments
    /// over (agents / this) seconds, at most a minute, after their 5 s
    /// pause, instead of all in the same instant. 0: no spreading.
    pub agent_return_rate: u32,
}

/// Default `memory_budget_mib`: 4 GiB, 14,500 sessions over QUIC at the
/// default window (288 KiB each), 31,000 over TLS/TCP (134 KiB each).
pub const DEFAULT_MEMORY_BUDGET_MIB: u64 = 4096;
/// Default `busy_delay`: far above an idle or merely busy gateway's (under
/// 1 ms and a few ms), reached when its CPU is saturated.
pub const DEFAULT_BUSY_DELAY: Duration = Duration::from_millis(20);
/// Default `busy_cpu_percent`.
pub const DEFAULT_BUSY_CPU_PERCENT: u32 = 85;
/// Default `agent_return_rate`: what a gateway on two cores takes back
/// (one core took about 1,400 a second: benches/RESULTS.md, "P7 per core").
pub const DEFAULT_AGENT_RETURN_RATE: u32 = 2000;
/// Default `quic_window_kib`: a 3 Mbit/s session's screen update (~37 KB)
/// fits in one round trip.
pub const DEFAULT_QUIC_WINDOW_KIB: u32 = 64;
/// Smallest and largest `quic_window_kib`.
const QUIC_WINDOW_KIB: std::ops::RangeInclusive<u32> = 16..=8192;

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_sessions: 20_000,
            handshake_timeout: Duration::from_secs(10),
            session_setup_timeout: Duration::from_secs(10),
            keepalive: kakehashi_transport::KEEPALIVE,
            idle_timeout: kakehashi_transport::IDLE_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            terminal_quic_streams: kakehashi_transport::quic::TERMINAL_STREAMS,
            memory_budget_mib: DEFAULT_MEMORY_BUDGET_MIB,
            busy_delay: DEFAULT_BUSY_DELAY,
            busy_cpu_percent: DEFAULT_BUSY_CPU_PERCENT,
            quic_window_kib: DEFAULT_QUIC_WINDOW_KIB,
            agent_return_rate: DEFAULT_AGENT_RETURN_RATE,
        }
    }
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Refuse sessions without a valid login token bound to the laptop (needs `[store]`).
    pub require_login: bool,
    /// Longest a login token lives (it also ends at local midnight).
    #[serde(deserialize_with = "duration")]
    pub token_lifetime: Duration,
    /// Failed attempts (per user and per source address) before a lockout.
    pub max_failures: u32,
    /// Window in which failures are counted.
    #[serde(deserialize_with = "duration")]
    pub failure_window: Duration,
    /// How long a lockout lasts.
    #[serde(deserialize_with = "duration")]
    pub lockout: Duration,
    /// How long an enrollment code stays valid.
    #[serde(deserialize_with = "duration")]
    pub enrollment_code_lifetime: Duration,
    /// Accept only attested hardware authenticators from these CA certificates (PEM files).
    pub attestation_ca: Vec<PathBuf>,
    /// Local time zone offset in hours (Asia/Tokyo = 9), for "end of the working day".
    pub utc_offset_hours: i8,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            require_login: true,
            token_lifetime: Duration::from_secs(10 * 3600),
            max_failures: 5,
            failure_window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
            enrollment_code_lifetime: Duration::from_secs(72 * 3600),
            attestation_ca: Vec::new(),
            utc_offset_hours: 9,
        }
    }
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
    /// BCP) in the store and re-decides live sessions.
    #[serde(deserialize_with = "duration")]
    pub watch: Duration,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            file: None,
            watch: Duration::from_millis(250),
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
    /// long (whole seconds) instead of a minute, so session time limits and
    /// idle timeouts can be tested end to end in seconds.
    #[serde(default, deserialize_with = "optional_duration")]
    pub policy_minute: Option<Duration>,
}

/// Validate `[identity]`; `has_store`: whether there is a `[store]`.
pub fn identity(
    id: IdentitySection,
    has_store: bool,
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> anyhow::Result<kakehashi_relay::Identity> {
    if id.max_failures == 0 {
        bail!("[identity] max_failures must be at least 1 (for example max_failures = 5)");
    }
    let token_lifetime = DurationKey::new("identity", "token_lifetime", "10h").between(
        id.token_lifetime,
        HOUR,
        24 * HOUR,
    )?;
    let enrollment_code_lifetime = DurationKey::new("identity", "enrollment_code_lifetime", "72h")
        .at_least(id.enrollment_code_lifetime, HOUR)?;
    if !(-12..=14).contains(&id.utc_offset_hours) {
        bail!("[identity] utc_offset_hours must be between -12 and 14 (for example utc_offset_hours = 9)");
    }
    if id.require_login && !has_store {
        bail!("[identity] require_login needs a [store] (set require_login = false to run without logins)");
    }
    Ok(kakehashi_relay::Identity {
        require_login: id.require_login,
        token_lifetime,
        max_failures: id.max_failures,
        failure_window: id.failure_window,
        lockout: id.lockout,
        enrollment_code_lifetime,
        attestation_ca: id.attestation_ca.into_iter().map(rel).collect(),
        utc_offset_secs: i32::from(id.utc_offset_hours) * 3600,
    })
}

/// The sections the relay is built from.
#[derive(Debug)]
pub struct RelaySections {
    /// Top-level `name`.
    pub name: String,
    /// `[tls]`
    pub tls: TlsSection,
    /// `[relay]`
    pub relay: RelaySection,
    /// `[identity]`, validated.
    pub identity: kakehashi_relay::Identity,
    /// `[policy]`
    pub policy: PolicySection,
    /// `[testing]`
    pub testing: Option<TestingSection>,
}

/// Validate the relay's sections into its configuration.
pub fn relay(
    s: RelaySections,
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> anyhow::Result<kakehashi_relay::Config> {
    let RelaySections {
        name,
        tls,
        relay:
            RelaySection {
                terminals,
                agents,
                limits: l,
                proxy_protocol_from,
            },
        identity,
        policy,
        testing,
    } = s;
    for (section, list) in [
        ("terminals", &terminals.advertise),
        ("agents", &agents.advertise),
    ] {
        if list.len() > 16 {
            bail!("[relay.{section}] advertise lists at most 16 addresses");
        }
        for a in list {
            let port_ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            let chars_ok = a
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
            if !port_ok || !chars_ok || a.len() > 253 {
                bail!("[relay.{section}] advertise: {a:?} is not host:port (for example advertise = [\"gw1.example.lg.jp:443\"])");
            }
        }
    }
    let proxy_protocol_from = kakehashi_transport::proxy::Balancers::parse(&proxy_protocol_from)
        .map_err(|e| anyhow::anyhow!("[relay] proxy_protocol_from: {e}"))?;
    if terminals.quic.is_none() && terminals.tcp.is_none() {
        bail!("[relay.terminals] needs at least one of quic or tcp (for example tcp = \"0.0.0.0:443\")");
    }
    if agents.quic.is_none() && agents.tcp.is_none() {
        bail!(
            "[relay.agents] needs at least one of quic or tcp (for example tcp = \"0.0.0.0:8443\")"
        );
    }
    if l.max_sessions == 0
        || l.terminal_quic_streams == 0
        || terminals.max_connections == 0
        || agents.max_connections == 0
    {
        bail!("[relay.limits] max_sessions and terminal_quic_streams, and max_connections of [relay.terminals] and [relay.agents], must be at least 1");
    }
    if l.memory_budget_mib == 0 || l.memory_budget_mib > 1 << 30 {
        bail!("[relay.limits] memory_budget_mib must be between 1 and 1073741824 (MiB; default {DEFAULT_MEMORY_BUDGET_MIB})");
    }
    if !QUIC_WINDOW_KIB.contains(&l.quic_window_kib) {
        bail!(
            "[relay.limits] quic_window_kib must be between {} and {} (KiB; default {DEFAULT_QUIC_WINDOW_KIB})",
            QUIC_WINDOW_KIB.start(),
            QUIC_WINDOW_KIB.end()
        );
    }
    if l.busy_delay > Duration::from_secs(1) {
        bail!("[relay.limits] busy_delay must be at most 1s (a mean over one second; \"0s\" turns the rule off; default \"20ms\")");
    }
    let busy_delay = l.busy_delay;
    if l.busy_cpu_percent > 100 {
        bail!("[relay.limits] busy_cpu_percent must be between 0 (off) and 100 (default {DEFAULT_BUSY_CPU_PERCENT})");
    }
    let at_least_a_second = |key, example, value| {
        DurationKey::new("relay.limits", key, example).at_least(value, SECOND)
    };
    let handshake_timeout = at_least_a_second("handshake_timeout", "10s", l.handshake_timeout)?;
    let session_setup_timeout =
        at_least_a_second("session_setup_timeout", "10s", l.session_setup_timeout)?;
    let keepalive = at_least_a_second("keepalive", "1s", l.keepalive)?;
    if l.idle_timeout <= keepalive {
        bail!(
            "[relay.limits] idle_timeout = \"{}\" must be longer than keepalive = \"{}\" (for example idle_timeout = \"4s\" with keepalive = \"1s\")",
            kakehashi_config::fmt_duration(l.idle_timeout),
            kakehashi_config::fmt_duration(keepalive),
        );
    }
    let policy_watch = DurationKey::new("policy", "watch", "250ms").between(
        policy.watch,
        Duration::from_millis(50),
        Duration::from_secs(5),
    )?;
    let mut testing_minute_secs = None;
    if let Some(t) = &testing {
        if t.relay_without_policy && identity.require_login {
            bail!("[testing] relay_without_policy needs [identity] require_login = false");
        }
        if t.non_rdp_desks && !t.relay_without_policy {
            bail!("[testing] non_rdp_desks applies only with relay_without_policy = true; with a [store] each desk's service is registered (`admin desk set --service other`)");
        }
        if let Some(m) = t.policy_minute {
            let m = DurationKey::new("testing", "policy_minute", "1s").between(
                m,
                SECOND,
                60 * SECOND,
            )?;
            if m.subsec_nanos() != 0 {
                bail!("[testing] policy_minute must be whole seconds (for example policy_minute = \"1s\")");
            }
            testing_minute_secs = Some(m.as_secs());
        }
        if t.controls.is_some() && !t.relay_without_policy {
            bail!("[testing] controls apply only with relay_without_policy = true; with a [store] the policy decides the controls");
        }
    }
    Ok(kakehashi_relay::Config {
        name,
        ca: rel(tls.ca),
        cert: rel(tls.cert),
        key: rel(tls.key),
        crl: tls.crl.map(rel),
        crl_grace: tls.crl_grace,
        resumption_keys: match tls.resumption_keys {
            Some(p) => (rel(p), true),
            None => (
                rel(tls.ticket_key.clone())
                    .parent()
                    .map(|d| d.join("tls-resumption.keys"))
                    .unwrap_or_else(|| PathBuf::from("tls-resumption.keys")),
                false,
            ),
        },
        ticket_key: rel(tls.ticket_key),
        proxy_protocol_from,
        terminal_quic: terminals.quic,
        terminal_tcp: terminals.tcp,
        terminal_max_connections: terminals.max_connections,
        terminal_handshakes_per_source: terminals.handshakes_per_source.max(1),
        terminal_quic_retry_above: terminals.quic_retry_above,
        agent_quic: agents.quic,
        agent_tcp: agents.tcp,
        agent_max_connections: agents.max_connections,
        agent_handshakes_per_source: agents.handshakes_per_source.max(1),
        agent_quic_retry_above: agents.quic_retry_above,
        advertise_terminals: terminals.advertise,
        advertise_agents: agents.advertise,
        max_sessions: l.max_sessions,
        terminal_quic_streams: l.terminal_quic_streams,
        memory_budget: l.memory_budget_mib << 20,
        busy_delay,
        busy_cpu_percent: l.busy_cpu_percent,
        agent_return_rate: l.agent_return_rate,
        quic_window: l.quic_window_kib * 1024,
        handshake_timeout,
        session_setup_timeout,
        keepalive,
        idle_timeout: l.idle_timeout,
        shutdown_grace: l.shutdown_grace,
        identity,
        policy_file: policy.file.map(rel),
        policy_watch,
        relay_without_policy: testing.as_ref().is_some_and(|t| t.relay_without_policy),
        testing_non_rdp_desks: testing.as_ref().is_some_and(|t| t.non_rdp_desks),
        testing_minute_secs,
        testing_controls: testing.and_then(|t| t.controls),
    })
}
