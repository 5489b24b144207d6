//! The benchmark PKI: one CA directory made with `kakehashi_pki` (gateway
//! certificate, a pool of device certificates, a client certificate for the
//! baselines' back-end leg), kept between runs, plus agent certificates for
//! thousands of desks signed in memory with the same CA key.
//!
//! The CA index refuses a second valid certificate per id and rewrites
//! itself on every issue, which is right for a real CA and quadratic for
//! 20,000 desks; the gateway only checks the chain and the CRL, so agent
//! certificates are made here with the same profile as `CaDir::issue`
//! (ECDSA P-256, desk URI SAN, clientAuth) without being indexed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use kakehashi_pki::{CaDir, InitOptions, IssueRequest, Subject, TerminalClass, DESK_URI_PREFIX};
use kakehashi_transport::tls::{self, TlsMaterial};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Device certificates issued through the CA index and shared by the laptops.
pub const DEVICE_POOL: usize = 32;
/// Desk id of the agent certificate the relays present on their back-end leg.
pub const RELAY_CLIENT_DESK: &str = "BENCH-RELAY";

/// Paths of the PKI files the gateway and the baselines read.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate.
    pub ca: PathBuf,
    /// CRL.
    pub crl: PathBuf,
    /// Gateway certificate (localhost, 127.0.0.1).
    pub gateway_cert: PathBuf,
    /// Gateway key.
    pub gateway_key: PathBuf,
    /// Ed25519 ticket signing key.
    pub ticket_key: PathBuf,
    /// Ticket public key.
    pub ticket_pub: PathBuf,
    /// Client certificate for the relays' back-end leg.
    pub relay_cert: PathBuf,
    /// Its key.
    pub relay_key: PathBuf,
}

/// The bench CA.
pub struct BenchPki {
    /// File paths.
    pub files: PkiFiles,
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    devices: Vec<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for BenchPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchPki")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl BenchPki {
    /// Open the CA in `dir`, creating it (and the certificates the benches
    /// need) the first time.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Arc<Self>> {
        // Absolute: the gateway resolves relative paths against its config file.
        let dir = &std::path::absolute(dir)?;
        let mut ca = if dir.join("ca.crt").exists() {
            CaDir::open(dir).context("cannot open the bench CA")?
        } else {
            CaDir::init(dir, &InitOptions::default()).context("cannot create the bench CA")?
        };
        let has = |ca: &CaDir, kind: &str, id: &str| {
            ca.records()
                .iter()
                .any(|r| r.kind == kind && r.id == id && r.revoked.is_none())
        };
        if !has(&ca, "gateway", "localhost") {
            ca.issue(&IssueRequest::new(Subject::Gateway {
                name: "localhost".into(),
                ips: vec!["127.0.0.1".parse().expect("ip")],
            }))?;
        }
        if !has(&ca, "agent", RELAY_CLIENT_DESK) {
            ca.issue(&IssueRequest::new(Subject::Agent {
                desk: RELAY_CLIENT_DESK.into(),
            }))?;
        }
        let mut devices = Vec::new();
        for i in 0..DEVICE_POOL {
            let id = format!("BENCH-LAPTOP-{i:02}");
            if !has(&ca, "device", &id) {
                ca.issue(&IssueRequest::new(Subject::Device {
                    id: id.clone(),
                    class: TerminalClass::Home,
                    user: Some(format!("bench-user-{i:02}")),
                }))?;
            }
            devices.push((
                dir.join(format!("device-{id}.crt")),
                dir.join(format!("device-{id}.key")),
            ));
        }
        ca.write_crl()?;
        let ca_der = tls::load_certs(&ca.ca_cert_path())?.remove(0);
        let key = KeyPair::from_pem(
            &std::fs::read_to_string(dir.join("ca.key")).context("cannot read ca.key")?,
        )?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)?;
        let files = PkiFiles {
            ca: ca.ca_cert_path(),
            crl: ca.crl_path(),
            gateway_cert: dir.join("gateway-localhost.crt"),
            gateway_key: dir.join("gateway-localhost.key"),
            ticket_key: ca.ticket_key_path(),
            ticket_pub: ca.ticket_public_path(),
            relay_cert: dir.join(format!("agent-{RELAY_CLIENT_DESK}.crt")),
            relay_key: dir.join(format!("agent-{RELAY_CLIENT_DESK}.key")),
        };
        Ok(Arc::new(Self {
            files,
            dir: dir.clone(),
            ca_der,
            issuer,
            devices,
        }))
    }

    /// A certificate for a gateway on another machine, `name` (the DNS name
    /// the load generator dials) and `ips`, from the bench CA: issued the
    /// first time, kept after. Returns the certificate and key files.
    pub fn gateway_named(
        &self,
        name: &str,
        ips: &[std::net::IpAddr],
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut ca = CaDir::open(&self.dir).context("cannot open the bench CA")?;
        let (cert, key) = (
            self.dir.join(format!("gateway-{name}.crt")),
            self.dir.join(format!("gateway-{name}.key")),
        );
        let current = ca
            .records()
            .iter()
            .any(|r| r.kind == "gateway" && r.id == name && r.revoked.is_none());
        if !current || !cert.exists() {
            ca.issue(&IssueRequest::new(Subject::Gateway {
                name: name.into(),
                ips: ips.to_vec(),
            }))
            .with_context(|| format!("cannot issue a gateway certificate for {name}"))?;
        }
        Ok((cert, key))
    }

    /// TLS material of laptop `i` (one of the pooled device certificates).
    pub fn device(&self, i: usize) -> anyhow::Result<TlsMaterial> {
        let (cert, key) = &self.devices[i % self.devices.len()];
        tls::TlsFiles {
            ca: self.files.ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            crl: None,
        }
        .load()
    }

    /// TLS material of the gateway (server side of the baselines too).
    pub fn gateway(&self) -> anyhow::Result<TlsMaterial> {
        tls::TlsFiles {
            ca: self.files.ca.clone(),
            cert: self.files.gateway_cert.clone(),
            key: self.files.gateway_key.clone(),
            crl: None,
        }
        .load()
    }

    /// A fresh agent certificate for `desk`, signed in memory by the CA.
    pub fn agent(&self, desk: &str) -> anyhow::Result<TlsMaterial> {
        let now = time::OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, desk);
        p.distinguished_name = name;
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = now - time::Duration::minutes(10);
        p.not_after = now + time::Duration::days(30);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.subject_alt_names
            .push(SanType::URI(format!("{DESK_URI_PREFIX}{desk}").try_into()?));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(TlsMaterial {
            ca: vec![self.ca_der.clone()],
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Agent certificates for many desks, made on blocking threads.
    pub async fn agents(self: &Arc<Self>, desks: &[String]) -> anyhow::Result<Vec<TlsMaterial>> {
        let chunks: Vec<Vec<String>> = desks.chunks(512).map(|c| c.to_vec()).collect();
        let mut handles = Vec::new();
        for c in chunks {
            let me = self.clone();
            handles.push(tokio::task::spawn_blocking(move || {
                c.iter()
                    .map(|d| me.agent(d))
                    .collect::<anyhow::Result<Vec<_>>>()
            }));
        }
        let mut out = Vec::with_capacity(desks.len());
        for h in handles {
            out.extend(h.await??);
        }
        Ok(out)
    }
}
