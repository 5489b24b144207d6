//! Keys and sections of the earlier layout of `gateway.toml` (flat relay
//! sections, numbers with their unit in the key's name, syslog under
//! `[audit]`), and where they are now. A file that still holds one is
//! refused with the new name and a value for each.

use kakehashi_config::Renamed;

/// Every renamed key and moved section.
pub const RENAMED: &[Renamed] = &[
    Renamed::section("terminals", "relay.terminals"),
    Renamed::section("agents", "relay.agents"),
    Renamed::section("limits", "relay.limits"),
    Renamed::duration(("tls", "crl_grace_hours"), ("tls", "crl_grace"), "h", "72h"),
    Renamed::duration(
        ("limits", "handshake_timeout_secs"),
        ("relay.limits", "handshake_timeout"),
        "s",
        "10s",
    ),
    Renamed::duration(
        ("limits", "session_setup_timeout_secs"),
        ("relay.limits", "session_setup_timeout"),
        "s",
        "10s",
    ),
    Renamed::duration(
        ("limits", "keepalive_secs"),
        ("relay.limits", "keepalive"),
        "s",
        "10s",
    ),
    Renamed::duration(
        ("limits", "idle_timeout_secs"),
        ("relay.limits", "idle_timeout"),
        "s",
        "30s",
    ),
    Renamed::duration(
        ("limits", "shutdown_grace_secs"),
        ("relay.limits", "shutdown_grace"),
        "s",
        "10s",
    ),
    Renamed::duration(
        ("identity", "token_hours"),
        ("identity", "token_lifetime"),
        "h",
        "10h",
    ),
    Renamed::duration(
        ("identity", "failure_window_secs"),
        ("identity", "failure_window"),
        "s",
        "15min",
    ),
    Renamed::duration(
        ("identity", "lockout_secs"),
        ("identity", "lockout"),
        "s",
        "15min",
    ),
    Renamed::duration(
        ("identity", "enrollment_code_hours"),
        ("identity", "enrollment_code_lifetime"),
        "h",
        "72h",
    ),
    Renamed::duration(
        ("portal", "header_timeout_secs"),
        ("portal", "header_timeout"),
        "s",
        "10s",
    ),
    Renamed::duration(
        ("portal", "idle_timeout_secs"),
        ("portal", "idle_timeout"),
        "s",
        "60s",
    ),
    Renamed::duration(("policy", "watch_ms"), ("policy", "watch"), "ms", "250ms"),
    Renamed::duration(
        ("audit", "checkpoint_interval_secs"),
        ("audit", "checkpoint_interval"),
        "s",
        "60s",
    ),
    Renamed::key(
        ("audit", "syslog"),
        ("syslog", "url"),
        "\"tls://logs.example.lg.jp:6514\"",
    ),
    Renamed::key(
        ("audit", "syslog_ca"),
        ("syslog", "ca"),
        "\"/etc/kakehashi/logserver-ca.crt\"",
    ),
    Renamed::key(
        ("audit", "syslog_facility"),
        ("syslog", "facility"),
        "\"authpriv\"",
    ),
    Renamed::key(("audit", "syslog_queue"), ("syslog", "queue"), "10000"),
    Renamed::duration(
        ("testing", "policy_minute_secs"),
        ("testing", "policy_minute"),
        "s",
        "1s",
    ),
];
