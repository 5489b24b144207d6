//! The three programs' configuration files, read as each program reads
//! them: byte 0 picks the gateway (`gateway.toml`), the agent
//! (`agent.toml`) or the client (`client.toml`) modulo 3; the rest is the
//! file's text (invalid UTF-8 is refused by the programs before parsing,
//! and here too).
//!
//! Each is parsed into its file struct (with the table of renamed keys)
//! and validated into its typed `Config` with relative paths resolved
//! against a fixture directory holding a valid ticket public key
//! (`ticket.pub`). No panic; every error prints; the gateway's errors
//! never show a store password (`redact_passwords`); a validated config's
//! paths are absolute.
#![no_main]

use std::path::Path;

use kakehashi_fuzz::outside::fixture_dir;
use libfuzzer_sys::fuzz_target;

fn gateway(text: &str) {
    let file = match kakehashi_gateway::config::ConfigFile::parse(text) {
        Ok(f) => f,
        Err(e) => {
            let shown = kakehashi_gateway::config::store::redact_passwords(&e.to_string());
            let _ = kakehashi_gateway::config::store::redact_passwords(&shown);
            return;
        }
    };
    match kakehashi_gateway::Config::from_file(file, Path::new("/etc/kakehashi")) {
        Ok(c) => {
            assert!(c.checkpoints.key.is_absolute());
            let _ = format!("{c:?}");
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
}

fn agent(text: &str, base: &Path) {
    let file = match kakehashi_agent::config::ConfigFile::parse(text) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match kakehashi_agent::Config::from_file(file, base) {
        Ok(c) => {
            assert!(c.ca.is_absolute() && c.cert.is_absolute() && c.key.is_absolute());
            assert!(!c.gateways.is_empty() && !c.ticket_keys.is_empty());
            assert!(c.backoff_initial <= c.backoff_max);
            assert!(c.quic_session_streams >= 1);
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
}

fn client(text: &str, base: &Path) {
    match kakehashi_client::Config::parse(text, base) {
        Ok(c) => {
            assert!(c.ca.is_absolute() && c.token_file.is_absolute());
            let _ = format!("{c:?}");
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let base = fixture_dir();
    match select % 3 {
        0 => gateway(text),
        1 => agent(text, base),
        _ => client(text, base),
    }
});
