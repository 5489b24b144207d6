//! The portal's validated settings, from the gateway's `[portal]` and
//! `[identity]` sections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Validated `[portal]`, with what the portal takes from the rest of the
/// configuration.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// WebAuthn RP id.
    pub rp_id: String,
    /// Origin.
    pub origin: url::Url,
    /// Plain HTTP (loopback only).
    pub insecure_http: bool,
    /// Connection caps, time-outs and the API rate per source.
    pub limits: PortalLimits,
    /// The HTTPS certificate (today the gateway's own certificate).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Logins, lockouts, attestation and the local UTC offset.
    pub identity: kakehashi_relay::Identity,
}

/// The portal's defences against an anonymous flood before login.
#[derive(Debug, Clone, Copy)]
pub struct PortalLimits {
    /// Most open connections in total.
    pub max_connections: usize,
    /// Most open connections from one source address.
    pub max_connections_per_source: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may stay silent both ways.
    pub idle_timeout: Duration,
    /// Sustained API calls per second per source address (burst: 10 s worth).
    pub api_rate_per_source: u32,
}

#[cfg(test)]
impl PortalConfig {
    /// What a gateway with this `origin` (its host as the RP id), the
    /// default limits and a default `[identity]` would give the portal.
    pub(crate) fn for_tests(origin: &str) -> Self {
        let origin = url::Url::parse(origin).expect("a test origin");
        Self {
            listen: "127.0.0.1:0".parse().expect("an address"),
            rp_id: origin.host_str().expect("a host").to_owned(),
            origin,
            insecure_http: false,
            limits: PortalLimits {
                max_connections: 16_384,
                max_connections_per_source: 1_024,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                api_rate_per_source: 50,
            },
            cert: "gw.pem".into(),
            key: "gw.key".into(),
            identity: kakehashi_relay::Identity {
                require_login: true,
                token_lifetime: Duration::from_secs(10 * 3600),
                max_failures: 5,
                failure_window: Duration::from_secs(900),
                lockout: Duration::from_secs(900),
                enrollment_code_lifetime: Duration::from_secs(72 * 3600),
                attestation_ca: Vec::new(),
                utc_offset_secs: 9 * 3600,
            },
        }
    }
}
