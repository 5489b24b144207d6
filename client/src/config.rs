//! Client configuration (`client.toml`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kakehashi_transport::TransportChoice;
use serde::Deserialize;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The gateway.
    pub gateway: GatewaySection,
    /// This laptop's certificate.
    pub tls: TlsSection,
    /// Defaults for `connect`.
    #[serde(default)]
    pub connect: ConnectSection,
    /// `kakehashi login`.
    #[serde(default)]
    pub login: LoginSection,
}

/// `[login]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    /// The portal's base URL, e.g. `https://gw.example.lg.jp:8444`.
    pub portal: Option<String>,
    /// Where the login token is kept (default: `token.json` next to this file).
    pub token_file: Option<PathBuf>,
    /// A software authenticator file (the demo's): `login` then runs the
    /// WebAuthn ceremony itself instead of opening a browser.
    pub soft_authenticator: Option<PathBuf>,
    /// The user id to log in as (pre-fills the portal's form; required with
    /// `soft_authenticator`).
    pub user: Option<String>,
}

/// `[gateway]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// `host:port` (TCP, and QUIC unless `quic_address` is set).
    pub address: String,
    /// `host:port` for QUIC when it differs.
    pub quic_address: Option<String>,
    /// Name in the gateway certificate (default: host part of `address`).
    pub server_name: Option<String>,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The organisation's CA certificate.
    pub ca: PathBuf,
    /// This laptop's device certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CRL for gateway certificates (optional).
    pub crl: Option<PathBuf>,
}

/// `[connect]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectSection {
    /// `auto`, `quic` or `tcp`.
    pub transport: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP address.
    pub tcp: String,
    /// QUIC address.
    pub quic: String,
    /// TLS server name.
    pub server_name: String,
    /// CA certificate.
    pub ca: PathBuf,
    /// Device certificate.
    pub cert: PathBuf,
    /// Device key.
    pub key: PathBuf,
    /// CRL.
    pub crl: Option<PathBuf>,
    /// Default transport.
    pub transport: TransportChoice,
    /// Portal base URL.
    pub portal: Option<String>,
    /// Token file.
    pub token_file: PathBuf,
    /// Software authenticator file.
    pub soft_authenticator: Option<PathBuf>,
    /// User id for login.
    pub user: Option<String>,
}

/// Where the configuration lives when neither `--config` nor
/// `KAKEHASHI_CONFIG` (read by the command line) is given.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("kakehashi").join("client.toml")
}

impl Config {
    /// Read and validate a file. Relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {} (use --config FILE)",
                path.display()
            )
        })?;
        let f: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let transport = match f.connect.transport.as_deref() {
            None => TransportChoice::Auto,
            Some(t) => t.parse().map_err(anyhow::Error::msg)?,
        };
        let host = {
            let h = f
                .gateway
                .address
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&f.gateway.address);
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        };
        Ok(Self {
            server_name: f.gateway.server_name.unwrap_or(host),
            quic: f
                .gateway
                .quic_address
                .unwrap_or_else(|| f.gateway.address.clone()),
            tcp: f.gateway.address,
            ca: rel(f.tls.ca),
            cert: rel(f.tls.cert),
            key: rel(f.tls.key),
            crl: f.tls.crl.map(rel),
            transport,
            portal: f.login.portal,
            token_file: rel(f
                .login
                .token_file
                .unwrap_or_else(|| PathBuf::from("token.json"))),
            soft_authenticator: f.login.soft_authenticator.map(rel),
            user: f.login.user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example lists every section and loads.
    #[test]
    fn deploy_example_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, include_str!("../../deploy/client.example.toml")).unwrap();
        let c = Config::load(&path).expect("deploy/client.example.toml loads");
        assert_eq!(c.tcp, "gw1.example.lg.jp:443");
        assert_eq!(c.server_name, "gw1.example.lg.jp");
        assert_eq!(c.cert, dir.path().join("device.crt"));
        assert_eq!(c.portal.as_deref(), Some("https://gw.example.lg.jp:8444"));
        assert_eq!(c.token_file, dir.path().join("token.json"));
        assert!(c.soft_authenticator.is_none() && c.user.is_none());
    }
}
