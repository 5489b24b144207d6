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
    /// Other gateways of the cluster (`host:port`, TCP and QUIC alike),
    /// tried in order when the one in use cannot be reached. Their
    /// certificate name is `server_name` when it is set (gateways sharing
    /// one name), else each one's host. The login token is valid on every
    /// one.
    #[serde(default)]
    pub fallback: Vec<String>,
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
    /// Fallback gateways, in order (`[gateway] fallback`).
    pub fallback: Vec<String>,
    /// `[gateway] server_name` as written, for the fallback gateways.
    pub fallback_server_name: Option<String>,
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
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parse and validate a file's text. Relative paths are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let f: ConfigFile = toml::from_str(text)?;
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let transport = match f.connect.transport.as_deref() {
            None => TransportChoice::Auto,
            Some(t) => t.parse().map_err(anyhow::Error::msg)?,
        };
        let host = host_of(&f.gateway.address);
        for a in &f.gateway.fallback {
            if a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                anyhow::bail!(
                    "[gateway] fallback {a:?} is not host:port (for example fallback = [\"gw2.example.lg.jp:443\"])"
                );
            }
        }
        Ok(Self {
            fallback_server_name: f.gateway.server_name.clone(),
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
            fallback: f.gateway.fallback,
        })
    }

    /// This configuration once per gateway, the configured one first, then
    /// each `[gateway] fallback` (its host as the certificate name).
    pub fn each_gateway(&self) -> Vec<Config> {
        let mut v = vec![self.clone()];
        for a in &self.fallback {
            v.push(Config {
                tcp: a.clone(),
                quic: a.clone(),
                server_name: self
                    .fallback_server_name
                    .clone()
                    .unwrap_or_else(|| host_of(a)),
                ..self.clone()
            });
        }
        v
    }
}

/// The host part of `host:port` (an IPv6 address without its brackets).
fn host_of(addr: &str) -> String {
    let h = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    h.trim_start_matches('[').trim_end_matches(']').to_string()
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
        // One host name for the gateway, its certificate and the portal.
        assert_eq!(c.portal.as_deref(), Some("https://gw1.example.lg.jp:8444"));
        assert_eq!(c.token_file, dir.path().join("token.json"));
        assert!(c.soft_authenticator.is_none() && c.user.is_none());
    }

    /// Fallback gateways: one configuration each, in order, with their own
    /// host as the certificate name unless `server_name` is set.
    #[test]
    fn fallback_gateways_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        let write = |gateway: &str| {
            std::fs::write(
                &path,
                format!("[gateway]\n{gateway}\n[tls]\nca = \"ca.crt\"\ncert = \"d.crt\"\nkey = \"d.key\"\n"),
            )
            .unwrap();
        };
        write("address = \"gw1.lg.jp:443\"\nfallback = [\"gw2.lg.jp:443\", \"[fd00::3]:443\"]");
        let each = Config::load(&path).unwrap().each_gateway();
        let got: Vec<(&str, &str)> = each
            .iter()
            .map(|c| (c.tcp.as_str(), c.server_name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("gw1.lg.jp:443", "gw1.lg.jp"),
                ("gw2.lg.jp:443", "gw2.lg.jp"),
                ("[fd00::3]:443", "fd00::3")
            ]
        );
        write("address = \"gw1.lg.jp:443\"\nserver_name = \"kakehashi.lg.jp\"\nfallback = [\"gw2.lg.jp:443\"]");
        let each = Config::load(&path).unwrap().each_gateway();
        assert_eq!(each[1].server_name, "kakehashi.lg.jp");
        write("address = \"gw1.lg.jp:443\"\nfallback = [\"gw2.lg.jp\"]");
        let e = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(e.contains("not host:port"), "{e}");
    }
}
