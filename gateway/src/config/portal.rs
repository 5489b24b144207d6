//! `[portal]`, validated into [`kakehashi_portal::PortalConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kakehashi_config::{duration, DurationKey};
use serde::Deserialize;

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
    /// The certificate (chain, PEM) the portal serves, for a name staff
    /// browsers already trust (a public or LGWAN CA, or one the
    /// municipality distributes to every browser). Default: `[tls] cert`,
    /// the gateway's certificate from the private CA, which browsers trust
    /// only once `ca.crt` is installed on each PC.
    pub cert: Option<PathBuf>,
    /// Its private key (required with `cert`; mode 0600).
    pub key: Option<PathBuf>,
    /// Serve plain HTTP. Allowed only on a loopback address (tests, demo);
    /// browsers treat `http://localhost` as a secure context for WebAuthn.
    #[serde(default)]
    pub insecure_http: bool,
    /// Most open portal connections in total (over it, new ones are closed at once).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open portal connections from one source address. Staff behind an
    /// office NAT or the LGWAN exit share one address: a browser holds up
    /// to six connections, so keep this above 6 × the staff behind one address.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    /// How long a client gets to send a request's headers (a connection that
    /// sends half a request and stops is closed after this).
    #[serde(default = "default_header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// How long a connection may stay open with nothing sent either way.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// API calls (`/api/…`) per second allowed from one source address,
    /// sustained; ten seconds' worth may come at once. Over it the answer is
    /// `rate_limited` (429) and the refusals are audited as one record per
    /// minute and address.
    #[serde(default = "default_api_rate")]
    pub api_rate_per_source: u32,
}

fn default_max_connections() -> usize {
    16_384
}

fn default_max_per_source() -> usize {
    1024
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_api_rate() -> u32 {
    50
}

/// What the portal takes from the other sections.
#[derive(Debug)]
pub struct Shared {
    /// `[tls] cert`, resolved.
    pub cert: PathBuf,
    /// `[tls] key`, resolved.
    pub key: PathBuf,
    /// `[identity]`, validated.
    pub identity: kakehashi_relay::Identity,
    /// Whether there is a `[store]`.
    pub has_store: bool,
}

/// Validate `[portal]`; `rel` resolves a path against the file's directory.
pub fn portal(
    p: PortalSection,
    shared: Shared,
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> anyhow::Result<kakehashi_portal::PortalConfig> {
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
    if !shared.has_store {
        bail!("[portal] needs a [store]");
    }
    if p.max_connections == 0 || p.max_connections_per_source == 0 || p.api_rate_per_source == 0 {
        bail!("[portal] max_connections, max_connections_per_source and api_rate_per_source must be at least 1");
    }
    let (cert, key) = match (p.cert, p.key) {
        (Some(c), Some(k)) => (rel(c), rel(k)),
        (None, None) => (shared.cert, shared.key),
        _ => bail!("[portal] cert と key は両方指定するか、両方省略してください / [portal] cert and key go together: give both (a certificate staff browsers trust and its key), or neither (the gateway's [tls] cert)"),
    };
    let second = Duration::from_secs(1);
    let header_timeout =
        DurationKey::new("portal", "header_timeout", "10s").at_least(p.header_timeout, second)?;
    let idle_timeout =
        DurationKey::new("portal", "idle_timeout", "60s").at_least(p.idle_timeout, second)?;
    Ok(kakehashi_portal::PortalConfig {
        listen: p.listen,
        rp_id: p.rp_id,
        origin,
        insecure_http: p.insecure_http,
        cert,
        key,
        identity: shared.identity,
        limits: kakehashi_portal::PortalLimits {
            max_connections: p.max_connections,
            max_connections_per_source: p.max_connections_per_source.min(p.max_connections),
            header_timeout,
            idle_timeout,
            api_rate_per_source: p.api_rate_per_source,
        },
    })
}
