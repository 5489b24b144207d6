//! Prometheus metrics, all named `kakehashi_…`, served on the internal admin
//! listener. Label values are bounded: levels, terminal classes, departments
//! (a fixed, administered list), transports and reason codes — never user,
//! device or desk ids.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports. Cheap to clone handles out of.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Live sessions by level, class, department and transport.
    pub sessions_active: IntGaugeVec,
    /// Sessions started, by class and transport.
    pub sessions_started: IntCounterVec,
    /// Sessions ended, by end reason.
    pub sessions_ended: IntCounterVec,
    /// Session setup latency (request to accepted), seconds.
    pub session_setup: Histogram,
    /// Refused sessions, by reason code.
    pub denials: IntCounterVec,
    /// Failed authentications (handshakes and certificate checks), by reason.
    pub auth_failures: IntCounterVec,
    /// Laptop logins completed (a one-time code redeemed for a login token).
    pub logins: IntCounter,
    /// Bytes relayed, by direction (`up` laptop→desk, `down` desk→laptop).
    pub bytes: IntCounterVec,
    /// Agents with a live tunnel, by transport.
    pub agents_online: IntGaugeVec,
    /// Configured session maximum.
    pub sessions_max: IntGauge,
    /// Sessions / maximum.
    pub capacity_used: Gauge,
    /// Configured budget of bytes in flight.
    pub memory_budget: IntGauge,
    /// Bytes of the budget taken by live sessions and sessions being set up.
    pub memory_reserved: IntGauge,
    /// The runtime's scheduling delay, mean over the last second.
    pub scheduling_delay: Gauge,
    /// CPU in use over the last second, as a fraction of what the gateway may use.
    pub cpu_used: Gauge,
    /// Certificate expiry (unix seconds), by certificate (`gateway`, `ca`).
    pub cert_expiry: GaugeVec,
    /// The CRL in force: `nextUpdate` as Unix time (0 without one).
    pub crl_next_update: IntGauge,
    /// Seconds since the CRL in force was issued (`thisUpdate`).
    pub crl_age: IntGauge,
    /// Blocked RDP channel attempts reported by agents, by kind.
    pub rdp_blocked: IntCounterVec,
    /// Audit records not forwarded to syslog (queue full, or too large for UDP).
    pub syslog_dropped: IntCounter,
    /// TLS session tickets presented by peers, by result (`resumed`, `refused`).
    pub tls_tickets: IntCounterVec,
    /// Connections turned away before their handshake by the per-source
    /// limit, or sent a QUIC Retry first, by listener role and kind
    /// (`per_source`, `quic_retry`).
    pub handshakes_limited: IntCounterVec,
    /// TLS/TCP connections by what their PROXY protocol header said, by
    /// listener role and result (`accepted`, `local`, or the refusal code).
    pub proxy_headers: IntCounterVec,
    /// 1 while this gateway can write its heartbeat to the store, else 0.
    pub store_up: IntGauge,
    /// Every cluster member this gateway knows of: 1 alive, 0 lapsed or left.
    pub member_up: IntGaugeVec,
    /// Live sessions of each cluster member, at its last heartbeat.
    pub member_sessions: IntGaugeVec,
    /// Audit records this gateway's change feed has yet to apply.
    pub feed_lag: IntGauge,
    /// Session ends held in memory while the store was unreachable, not
    /// yet written.
    pub ends_unrecorded: IntGauge,
    /// This process's CPU time, user and system (read at each scrape).
    process_cpu: Gauge,
    /// This process's resident memory (read at each scrape).
    process_rss: IntGauge,
    /// This process's open file descriptors (read at each scrape).
    process_fds: IntGauge,
}

impl Metrics {
    /// Register every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric name");
                m
            }};
        }
        let setup_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Self {
            sessions_active: reg!(IntGaugeVec::new(
                Opts::new("kakehashi_sessions_active", "Live sessions by confidentiality level, terminal class, department and transport"),
                &["level", "class", "dept", "transport"]
            )),
            sessions_started: reg!(IntCounterVec::new(
                Opts::new("kakehashi_sessions_started_total", "Sessions started"),
                &["class", "transport"]
            )),
            sessions_ended: reg!(IntCounterVec::new(
                Opts::new("kakehashi_sessions_ended_total", "Sessions ended, by end reason"),
                &["reason"]
            )),
            session_setup: reg!(Histogram::with_opts(
                HistogramOpts::new("kakehashi_session_setup_seconds", "Time from session request to session accepted")
                    .buckets(setup_buckets)
            )),
            denials: reg!(IntCounterVec::new(
                Opts::new("kakehashi_denials_total", "Refused session requests, by reason code"),
                &["reason"]
            )),
            auth_failures: reg!(IntCounterVec::new(
                Opts::new("kakehashi_auth_failures_total", "Failed authentications, by reason"),
                &["reason"]
            )),
            logins: reg!(IntCounter::new(
                "kakehashi_logins_total",
                "Laptop logins completed (one-time login code redeemed for a login token)"
            )),
            bytes: reg!(IntCounterVec::new(
                Opts::new("kakehashi_bytes_total", "Bytes relayed (up: laptop to desk, down: desk to laptop)"),
                &["direction"]
            )),
            agents_online: reg!(IntGaugeVec::new(
                Opts::new("kakehashi_agents_online", "Desk agents with a live tunnel"),
                &["transport"]
            )),
            sessions_max: reg!(IntGauge::new("kakehashi_sessions_max", "Configured maximum of concurrent sessions")),
            capacity_used: reg!(Gauge::new("kakehashi_capacity_used_ratio", "Live sessions divided by the configured maximum")),
            memory_budget: reg!(IntGauge::new("kakehashi_memory_budget_bytes", "Configured budget of bytes in flight (relay buffers, QUIC send and receive windows)")),
            memory_reserved: reg!(IntGauge::new("kakehashi_memory_reserved_bytes", "Bytes in flight the live sessions may hold: the sum of their shares of the budget")),
            scheduling_delay: reg!(Gauge::new("kakehashi_scheduling_delay_seconds", "How late the gateway runs a task that is ready, mean over the last second; above [relay.limits] busy_delay new sessions are refused with gateway_busy")),
            cpu_used: reg!(Gauge::new("kakehashi_cpu_used_ratio", "CPU the gateway used over the last second, as a fraction of what it may use (its cores, or its cgroup quota); at [relay.limits] busy_cpu_percent new sessions are refused with gateway_busy")),
            cert_expiry: reg!(GaugeVec::new(
                Opts::new("kakehashi_certificate_expiry_timestamp_seconds", "Certificate notAfter as unix time"),
                &["cert"]
            )),
            crl_next_update: reg!(IntGauge::new("kakehashi_crl_next_update_timestamp_seconds", "nextUpdate of the CRL in force as unix time; after it and [tls] crl_grace every peer is refused with crl_stale")),
            crl_age: reg!(IntGauge::new("kakehashi_crl_age_seconds", "Seconds since the CRL in force was issued (thisUpdate)")),
            rdp_blocked: reg!(IntCounterVec::new(
                Opts::new("kakehashi_rdp_blocked_total", "Blocked RDP channel attempts reported by agents, by kind"),
                &["kind"]
            )),
            syslog_dropped: reg!(IntCounter::new(
                "kakehashi_syslog_dropped_total",
                "Audit records not forwarded to syslog (queue full while the server was away, or too large for UDP); they stay in the store"
            )),
            tls_tickets: reg!(IntCounterVec::new(
                Opts::new("kakehashi_tls_tickets_total", "TLS session tickets presented by agents and laptops: resumed (no full handshake) or refused (key rotated out or from another gateway: full handshake)"),
                &["result"]
            )),
            handshakes_limited: reg!(IntCounterVec::new(
                Opts::new("kakehashi_handshakes_limited_total", "Connections closed before their handshake because their source address already had handshakes_per_source in progress (per_source), or asked to prove their address with a QUIC Retry while many handshakes were in progress (quic_retry)"),
                &["role", "kind"]
            )),
            proxy_headers: reg!(IntCounterVec::new(
                Opts::new("kakehashi_proxy_headers_total", "TLS/TCP connections by their PROXY protocol header: accepted (a client named by a balancer of [relay] proxy_protocol_from), local (a balancer's own connection, e.g. a health check), or closed with a refusal code (proxy_untrusted, proxy_header_missing, proxy_header_invalid, proxy_header_too_large, proxy_address_unsupported)"),
                &["role", "result"]
            )),
            store_up: reg!(IntGauge::new("kakehashi_store_up", "1 while this gateway can write to its store (its cluster heartbeat succeeds), 0 while it cannot: new sessions are refused (store_unavailable), live ones go on")),
            member_up: reg!(IntGaugeVec::new(
                Opts::new("kakehashi_cluster_member_up", "Gateways sharing this store: 1 alive (heartbeat within 10 s), 0 lapsed or left"),
                &["member"]
            )),
            member_sessions: reg!(IntGaugeVec::new(
                Opts::new("kakehashi_cluster_member_sessions", "Live sessions of each gateway sharing this store, at its last heartbeat (2 s)"),
                &["member"]
            )),
            feed_lag: reg!(IntGauge::new("kakehashi_change_feed_lag", "Audit records (changes) this gateway has not applied to its live sessions yet")),
            ends_unrecorded: reg!(IntGauge::new("kakehashi_session_ends_unrecorded", "Session ends this gateway holds in memory because the store could not take them; written once it answers (lost if the gateway stops first: its next start closes those rows as gateway_restart)")),
            process_cpu: reg!(Gauge::new("kakehashi_process_cpu_seconds", "CPU time this gateway process has used, user and system, in seconds (rate() gives cores in use)")),
            process_rss: reg!(IntGauge::new("kakehashi_process_resident_bytes", "Resident memory of this gateway process, bytes")),
            process_fds: reg!(IntGauge::new("kakehashi_process_open_fds", "Open file descriptors of this gateway process (sockets included)")),
            registry,
        };
        m.zero_known_series();
        m
    }

    /// Every series whose label values are known in advance (reason codes,
    /// terminal classes, transports, directions, listener roles) exported at
    /// 0 from the start, so dashboards and alert rules (`rate()`,
    /// `increase()`) work before the first event; departments and desks are
    /// not known in advance.
    fn zero_known_series(&self) {
        let reasons: Vec<&'static str> = kakehashi_proto::Reason::ALL
            .iter()
            .map(|r| r.code())
            .chain(kakehashi_policy::ReasonCode::ALL.iter().map(|r| r.code()))
            .collect();
        for r in &reasons {
            self.denials.with_label_values(&[r]);
            self.sessions_ended.with_label_values(&[r]);
            self.auth_failures.with_label_values(&[r]);
        }
        for r in ["closed", "peer_error", "other"] {
            self.sessions_ended.with_label_values(&[r]);
            self.denials.with_label_values(&[r]);
        }
        for r in [
            "no_certificate",
            "wrong_alpn",
            "tls_error",
            "io_error",
            "quic_error",
            "handshake_timeout",
        ] {
            self.auth_failures.with_label_values(&[r]);
        }
        for t in ["quic", "tcp"] {
            self.agents_online.with_label_values(&[t]);
            for c in ["home", "mobile", "satellite"] {
                self.sessions_started.with_label_values(&[c, t]);
            }
        }
        for d in ["up", "down"] {
            self.bytes.with_label_values(&[d]);
        }
        for r in ["resumed", "refused"] {
            self.tls_tickets.with_label_values(&[r]);
        }
        for role in ["terminal", "agent"] {
            for k in ["per_source", "quic_retry"] {
                self.handshakes_limited.with_label_values(&[role, k]);
            }
            let refusals = kakehashi_transport::proxy::ProxyRefusal::ALL
                .iter()
                .map(|r| r.code());
            for r in ["accepted", "local"].into_iter().chain(refusals) {
                self.proxy_headers.with_label_values(&[role, r]);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let p = process::read();
        self.process_cpu.set(p.cpu_secs);
        self.process_rss.set(p.rss_bytes);
        self.process_fds.set(p.open_fds);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding never fails");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }

    /// Names of every metric family exported (for checks of dashboards and alert rules).
    pub fn names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// This process's own figures, from `/proc/self` (Linux; zeros elsewhere),
/// so a load generator on another machine (or Prometheus) can read the
/// gateway's CPU and memory from its metrics alone.
pub(crate) mod process {
    /// CPU seconds, resident bytes, open descriptors.
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct Figures {
        pub(super) cpu_secs: f64,
        pub(super) rss_bytes: i64,
        pub(super) open_fds: i64,
    }

    /// `/proc/self/stat` counts CPU time in USER_HZ ticks, which Linux fixes
    /// at 100 per second in its user interface.
    const USER_HZ: f64 = 100.0;
    const PAGE: i64 = 4096;

    /// CPU seconds this process has used, user and system, in steps of
    /// 1/USER_HZ (10 ms); zero where `/proc/self/stat` cannot be read.
    pub(crate) fn cpu_secs() -> f64 {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return 0.0;
        };
        // Fields after the command name (in parentheses, may hold
        // spaces): utime and stime are the 12th and 13th.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return 0.0;
        };
        let v: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| v.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (tick(11) + tick(12)) / USER_HZ
    }

    pub(super) fn read() -> Figures {
        let mut f = Figures {
            cpu_secs: cpu_secs(),
            ..Figures::default()
        };
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let pages = statm
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<i64>().ok())
                .unwrap_or(0);
            f.rss_bytes = pages.saturating_mul(PAGE);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            f.open_fds = i64::try_from(dir.count()).unwrap_or(i64::MAX);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families_with_the_prefix() {
        let m = Metrics::new();
        m.sessions_active
            .with_label_values(&["2", "home", "somu", "quic"])
            .inc();
        m.denials.with_label_values(&["desk_offline"]).inc();
        let text = m.render();
        assert!(text.contains("kakehashi_sessions_active{class=\"home\",dept=\"somu\",level=\"2\",transport=\"quic\"} 1"), "{text}");
        assert!(text.contains("kakehashi_denials_total{reason=\"desk_offline\"} 1"));
        assert!(m.names().iter().all(|n| n.starts_with("kakehashi_")));
    }

    #[test]
    fn the_process_figures_are_this_process() {
        // Burn a little CPU and hold some memory, so none of them is 0.
        let v: Vec<u64> = (0..2_000_000u64).map(|i| i.wrapping_mul(31)).collect();
        let mut x = 0u64;
        while super::process::read().cpu_secs < 0.01 {
            x = x.wrapping_add(v.iter().sum::<u64>());
        }
        let text = Metrics::new().render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing: {text}"))
        };
        assert!(value("kakehashi_process_cpu_seconds") >= 0.01, "{x}");
        // At least the vector above is resident.
        assert!(value("kakehashi_process_resident_bytes") >= 16e6, "{text}");
        assert!(value("kakehashi_process_open_fds") >= 3.0, "{text}");
    }

    /// Series with known labels exist at 0 before the first event.
    #[test]
    fn known_series_start_at_zero() {
        let text = Metrics::new().render();
        for series in [
            "kakehashi_auth_failures_total{reason=\"certificate_revoked\"} 0",
            "kakehashi_auth_failures_total{reason=\"handshake_timeout\"} 0",
            "kakehashi_denials_total{reason=\"store_unavailable\"} 0",
            "kakehashi_denials_total{reason=\"plan_required\"} 0",
            "kakehashi_denials_total{reason=\"gateway_busy\"} 0",
            "kakehashi_memory_reserved_bytes 0",
            "kakehashi_sessions_ended_total{reason=\"closed\"} 0",
            "kakehashi_sessions_started_total{class=\"home\",transport=\"quic\"} 0",
            "kakehashi_bytes_total{direction=\"up\"} 0",
            "kakehashi_agents_online{transport=\"tcp\"} 0",
            "kakehashi_proxy_headers_total{result=\"proxy_untrusted\",role=\"terminal\"} 0",
            "kakehashi_proxy_headers_total{result=\"local\",role=\"agent\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
