//! `[syslog]`: forwarding of audit records to a syslog server, validated
//! into [`SyslogConfig`].

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

use crate::syslog::{SyslogConfig, SyslogTarget};

/// `[syslog]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSection {
    /// The syslog server (RFC 5424 messages): `udp://HOST:PORT`,
    /// `tcp://HOST:PORT` (octet-counted, RFC 6587) or `tls://HOST:PORT`
    /// (RFC 5425, needs `ca`). Needs `[store]`.
    pub url: String,
    /// Facility name (`authpriv`, `auth`, `local0` … `local7`, …).
    #[serde(default = "default_facility")]
    pub facility: String,
    /// Records held for the syslog server while it is slow or away; beyond
    /// that they are dropped from forwarding (never from the store) and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// For `tls://` (RFC 5425): the CA certificate(s) (PEM) that issued the
    /// log server's certificate. The gateway offers its own certificate
    /// when the server asks for one.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_facility() -> String {
    "authpriv".into()
}

fn default_queue() -> usize {
    10_000
}

/// Validate `[syslog]`; `cert` and `key` are the gateway's own (`[tls]`),
/// resolved, offered to a `tls://` server.
pub fn syslog(
    s: SyslogSection,
    has_store: bool,
    (cert, key): (&Path, &Path),
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> anyhow::Result<SyslogConfig> {
    if !has_store {
        bail!("[syslog] needs a [store] (the records it forwards)");
    }
    let sc = SyslogConfig::new(&s.url, &s.facility, s.queue)?;
    match (&sc.target, s.ca) {
        (SyslogTarget::Tls(_), Some(ca)) => sc.with_tls(&rel(ca), cert, key),
        (SyslogTarget::Tls(_), None) => {
            bail!("[syslog] url = \"tls://…\" needs ca (the CA certificate that issued the log server's certificate), for example ca = \"/etc/kakehashi/logserver-ca.crt\"")
        }
        (_, Some(_)) => bail!("[syslog] ca is for tls:// only"),
        (_, None) => Ok(sc),
    }
}
