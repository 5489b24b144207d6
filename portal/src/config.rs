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
    /// How long open connections may finish after shutdown begins.
    pub shutdown_grace: Duration,
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
