//! Certificates for this crate's unit tests, from our own CA code.

use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Issued, Subject, TerminalClass};

use crate::tls::{self, ReloadingClientVerifier, TlsFiles, TlsMaterial};

/// A fresh CA with a gateway certificate for `localhost` and one device.
pub(crate) struct TestCerts {
    _dir: tempfile::TempDir,
    /// The gateway's material.
    pub gateway: TlsMaterial,
    /// The device's material.
    pub device: TlsMaterial,
}

impl TestCerts {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca = CaDir::init(dir.path(), &InitOptions::default()).expect("CA");
        let gw = ca
            .issue(&IssueRequest::new(Subject::Gateway {
                name: "localhost".into(),
                ips: vec![],
            }))
            .expect("gateway certificate");
        let dev = ca
            .issue(&IssueRequest::new(Subject::Device {
                id: "LAPTOP-UNIT".into(),
                class: TerminalClass::Home,
                user: None,
            }))
            .expect("device certificate");
        let load = |i: &Issued| {
            TlsFiles {
                ca: ca.ca_cert_path(),
                cert: i.cert_path.clone(),
                key: i.key_path.clone(),
                crl: None,
            }
            .load()
            .expect("load")
        };
        let (gateway, device) = (load(&gw), load(&dev));
        Self {
            _dir: dir,
            gateway,
            device,
        }
    }

    /// The gateway's server config for `alpn`.
    pub(crate) fn server(&self, alpn: &[u8]) -> rustls::ServerConfig {
        let v = ReloadingClientVerifier::new(&self.gateway.ca, None).expect("verifier");
        tls::server_config(&self.gateway, v, alpn).expect("server config")
    }

    /// The device's client config for `alpn`.
    pub(crate) fn client(&self, alpn: &[u8]) -> rustls::ClientConfig {
        tls::client_config(&self.device, None, alpn).expect("client config")
    }
}
