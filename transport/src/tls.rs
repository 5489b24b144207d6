//! TLS material and rustls configurations. TLS 1.3 only, ring only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::crl::{self, CrlDates, CrlFile, CrlSource};

/// The one crypto provider: ring, with TLS13_AES_128_GCM_SHA256 first.
///
/// ring lists TLS13_AES_256_GCM_SHA384 first. Its SHA-384 (handshake
/// transcript, key schedule) runs on the plain SHA-512 code, which was 4.7 %
/// of the gateway's CPU in the handshake profile, where SHA-256 uses the
/// CPU's SHA instructions; AES-128 also needs fewer rounds per record. QUIC
/// protects its first packets with AES-128-GCM anyway. Only the order
/// changes: every suite ring offers stays available (the RDP filter's TLS
/// legs may meet TLS 1.2 peers).
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // A stable sort: the rest keep ring's order.
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Read every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificate file {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// Read a private key from a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read private key from {}", path.display()))
}

/// Kept here for the gateway's `tls::check_key_file` users; new code uses
/// [`crate::keyfile::check_key_file`].
pub use crate::keyfile::check_key_file;

/// Checks that `key` belongs to the first certificate of `chain` (e.g. an RDP
/// server's pair, checked when the agent starts rather than at the first session).
pub fn check_key_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> anyhow::Result<()> {
    let provider = provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider)
            .context("cannot load the key with its certificate")?;
    certified
        .keys_match()
        .context("the key is not the certificate's")?;
    Ok(())
}

/// A root store holding only our CA certificate(s).
pub fn roots(ca: &[CertificateDer<'static>]) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in ca {
        store.add(c.clone()).context("invalid CA certificate")?;
    }
    Ok(Arc::new(store))
}

/// Our own certificate chain and key, plus the CA we trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Our certificate (PEM).
    pub cert: PathBuf,
    /// Our private key (PEM).
    pub key: PathBuf,
    /// CRL (PEM), optional.
    pub crl: Option<PathBuf>,
}

/// Loaded TLS material.
#[derive(Debug)]
pub struct TlsMaterial {
    /// CA certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// Our chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsFiles {
    /// Load the files.
    pub fn load(&self) -> anyhow::Result<TlsMaterial> {
        Ok(TlsMaterial {
            ca: load_certs(&self.ca)?,
            chain: load_certs(&self.cert)?,
            key: load_key(&self.key)?,
        })
    }
}

fn build_client_verifier(
    roots: &Arc<RootCertStore>,
    crl: Option<&CrlFile>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    if let Some(crl) = crl {
        b = b.with_crls(crl.ders.clone());
    }
    b.build()
        .context("cannot build client certificate verifier")
}

/// A client-certificate verifier whose CRL can be swapped while the server
/// runs. Handshakes in flight keep the verifier they started with.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    roots: Arc<RootCertStore>,
    crl: Option<CrlSource>,
    grace: Duration,
    hints: Vec<DistinguishedName>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Serials in the current CRL, for [`ReloadingClientVerifier::check_peer`].
    revoked: RwLock<HashSet<Vec<u8>>>,
    /// The current CRL's dates, for the staleness check and the metrics.
    dates: RwLock<Option<CrlDates>>,
}

/// Why a peer certificate that passed (or skipped, on resumption) the
/// handshake is no longer acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCertProblem {
    /// Listed in the current CRL.
    Revoked,
    /// Outside its validity period.
    Expired,
    /// Not parseable.
    Unreadable,
    /// The CRL in force is past its `nextUpdate` and the grace period:
    /// nothing can be admitted until the current CRL is installed.
    CrlStale,
}

/// What a server keeps of a peer's end-entity certificate to check it again
/// while the connection lasts (a CRL that changes, a certificate that
/// expires): its serial number and validity dates. The whole certificate
/// would be another kilobyte per connection, next to rustls's own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertFacts {
    /// The serial number as encoded in the certificate.
    pub serial: Box<[u8]>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl PeerCertFacts {
    /// Read them from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PeerCertProblem> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| PeerCertProblem::Unreadable)?;
        let v = cert.validity();
        Ok(Self {
            serial: cert.raw_serial().into(),
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        })
    }
}

impl ReloadingClientVerifier {
    /// Verify against `ca`, with the CRL at `crl` when given, trusted for
    /// [`crl::DEFAULT_GRACE`] past its `nextUpdate`.
    pub fn new(ca: &[CertificateDer<'static>], crl: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        Self::with_grace(ca, crl, crl::DEFAULT_GRACE)
    }

    /// [`ReloadingClientVerifier::new`] with the CRL trusted for `grace`
    /// past its `nextUpdate` (`[tls] crl_grace`). A stale CRL does
    /// not stop the gateway from starting (its portal and metrics must work
    /// for the fix); [`ReloadingClientVerifier::check_peer`] refuses peers.
    pub fn with_grace(
        ca: &[CertificateDer<'static>],
        crl: Option<PathBuf>,
        grace: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let roots = roots(ca)?;
        let (crl, file) = crl.map(CrlSource::open).transpose()?.unzip();
        let inner = build_client_verifier(&roots, file.as_ref())?;
        let hints = inner.root_hint_subjects().to_vec();
        let (revoked, dates) = match file {
            Some(f) => (f.revoked, Some(f.dates)),
            None => (HashSet::new(), None),
        };
        Ok(Arc::new(Self {
            roots,
            crl,
            grace,
            hints,
            inner: RwLock::new(inner),
            revoked: RwLock::new(revoked),
            dates: RwLock::new(dates),
        }))
    }

    /// The dates of the CRL in force, if there is one.
    pub fn crl_dates(&self) -> Option<CrlDates> {
        *self.dates.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the CRL in force is stale at `now` (Unix seconds), as an
    /// error naming the file.
    pub fn crl_fresh(&self, now: u64) -> Result<(), crl::CrlStale> {
        match (self.crl_dates(), &self.crl) {
            (Some(d), Some(src)) => d.check(
                src.path(),
                i64::try_from(now).unwrap_or(i64::MAX),
                self.grace,
            ),
            _ => Ok(()),
        }
    }

    /// Check a peer's end-entity certificate after the handshake against the
    /// *current* CRL and its validity dates. A resumed TLS 1.3 session skips
    /// client-certificate verification, so without this a laptop revoked
    /// after its last full handshake could keep opening sessions. A stale
    /// CRL refuses every peer: revocations since may be missing.
    pub fn check_peer(&self, cert: &PeerCertFacts, now: u64) -> Result<(), PeerCertProblem> {
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&cert.serial[..])
        {
            return Err(PeerCertProblem::Revoked);
        }
        if self.crl_fresh(now).is_err() {
            return Err(PeerCertProblem::CrlStale);
        }
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        if now < cert.not_before || now > cert.not_after {
            return Err(PeerCertProblem::Expired);
        }
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reload the CRL if its file changed. Returns `Ok(true)` after a reload.
    /// A CRL that fails to load leaves the previous one in force.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let Some(src) = &self.crl else {
            return Ok(false);
        };
        let reloaded =
            src.reload_with(|file| Ok((build_client_verifier(&self.roots, Some(&file))?, file)));
        let (v, file) = match reloaded {
            None => return Ok(false),
            Some(r) => r?,
        };
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = v;
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = file.revoked;
        *self.dates.write().unwrap_or_else(|e| e.into_inner()) = Some(file.dates);
        Ok(true)
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Server config: TLS 1.3, client certificates required and checked by `verifier`.
pub fn server_config(
    m: &TlsMaterial,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let tickets = Arc::new(crate::resumption::PersistentTicketer::in_memory()?);
    server_config_with_tickets(m, verifier, alpn, tickets)
}

/// [`server_config`] with the given ticket keys: a
/// [`PersistentTicketer`](crate::resumption::PersistentTicketer) on a file
/// lets peers resume across a restart of the server.
pub fn server_config_with_tickets(
    m: &TlsMaterial,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> anyhow::Result<rustls::ServerConfig> {
    let key = provider()
        .key_provider
        .load_private_key(m.key.clone_key())
        .context("unusable private key")?;
    let certified = rustls::sign::CertifiedKey::new(m.chain.clone(), key);
    certified
        .keys_match()
        .context("certificate and key do not match")?;
    let fixed = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    server_config_with_resolver(fixed, verifier, alpn, tickets)
}

/// [`server_config_with_tickets`] presenting whatever `cert` resolves to,
/// e.g. a [`ReloadingCert`](crate::server_cert::ReloadingCert) that follows
/// its files.
pub fn server_config_with_resolver(
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // Our order ([`provider`]), not the client's: clients built before the
    // order changed still list AES-256 first.
    cfg.ignore_client_order = true;
    // Resumption, so reconnect storms skip the full handshake, with
    // stateless tickets: the session state travels encrypted in the ticket
    // (ChaCha20-Poly1305, key rotated every 6 hours) instead of a server-side
    // cache entry per ticket (about 1.1 KiB each, two per handshake: the
    // entry holds the client's certificate) kept for every client connected
    // or gone, in caches that would be full and evicting at 16,000 clients.
    cfg.ticketer = tickets;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Client config: TLS 1.3, the server checked against our CA only (and the
/// CRL, when given), our certificate presented. A CRL past its `nextUpdate`
/// and [`crl::DEFAULT_GRACE`] is refused with [`crl::CrlStale`].
pub fn client_config(
    m: &TlsMaterial,
    crl: Option<&Path>,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let file = match crl {
        Some(path) => {
            let f = CrlFile::read(path)?;
            f.dates.check(path, unix_secs(), crl::DEFAULT_GRACE)?;
            Some(f)
        }
        None => None,
    };
    client_config_with(m, file.as_ref(), alpn)
}

fn unix_secs() -> i64 {
    i64::try_from(crate::unix_now()).unwrap_or(i64::MAX)
}

fn client_config_with(
    m: &TlsMaterial,
    crl: Option<&CrlFile>,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let roots = roots(&m.ca)?;
    let mut vb = WebPkiServerVerifier::builder_with_provider(roots, provider());
    if let Some(crl) = crl {
        vb = vb.with_crls(crl.ders.clone());
    }
    let verifier = vb
        .build()
        .context("cannot build server certificate verifier")?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .context("certificate and key do not match")?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A client configuration for a long-running peer (the agent): the CRL is
/// read again when its file changes, and a CRL past its `nextUpdate` and
/// the grace period refuses every new connection ([`crl::CrlStale`]) until
/// the current one is installed.
#[derive(Debug)]
pub struct ClientTls {
    material: TlsMaterial,
    crl: Option<CrlSource>,
    alpn: Vec<u8>,
    grace: Duration,
    state: RwLock<ClientTlsState>,
}

#[derive(Debug)]
struct ClientTlsState {
    dates: Option<CrlDates>,
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Build from our material and the CRL file, if any. Fails on an
    /// unreadable CRL; a stale one fails later, at [`ClientTls::config`],
    /// so the peer keeps retrying and picks up the renewed file.
    pub fn new(
        material: TlsMaterial,
        crl: Option<PathBuf>,
        alpn: &[u8],
        grace: Duration,
    ) -> anyhow::Result<Self> {
        let (crl, file) = crl.map(CrlSource::open).transpose()?.unzip();
        let config = Arc::new(client_config_with(&material, file.as_ref(), alpn)?);
        Ok(Self {
            state: RwLock::new(ClientTlsState {
                dates: file.map(|f| f.dates),
                config,
            }),
            material,
            crl,
            alpn: alpn.to_vec(),
            grace,
        })
    }

    /// The configuration for the next connection. The CRL is re-read when
    /// its file changed; a file that fails to load leaves the previous CRL
    /// in force (the error is logged).
    pub fn config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let reloaded = self.crl.as_ref().and_then(|src| {
            src.reload_with(|f| {
                let config = client_config_with(&self.material, Some(&f), &self.alpn)?;
                Ok((config, f.dates))
            })
        });
        match reloaded {
            None => {}
            Some(Ok((config, dates))) => {
                let path = self.crl.as_ref().map(|s| s.path().display().to_string());
                tracing::info!(crl = %path.unwrap_or_default(), "CRL reloaded");
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = ClientTlsState {
                    dates: Some(dates),
                    config: Arc::new(config),
                };
            }
            Some(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "CRL reload failed; keeping the previous CRL");
            }
        }
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let (Some(d), Some(src)) = (st.dates, &self.crl) {
            d.check(src.path(), unix_secs(), self.grace)?;
        }
        Ok(st.config.clone())
    }
}

/// Server name for TLS from a host string (DNS name or IP address).
pub fn server_name(host: &str) -> anyhow::Result<rustls::pki_types::ServerName<'static>> {
    rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("invalid server name {host:?}"))
}

/// The end-entity certificate a QUIC peer presented.
pub fn quic_peer_cert(c: &quinn::Connection) -> Option<CertificateDer<'static>> {
    c.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_certs::TestCerts;

    /// Handshake over an in-memory pipe; the suite the server chose.
    async fn negotiated(server: rustls::ServerConfig, client: rustls::ClientConfig) -> CipherSuite {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (s, c) = tokio::join!(
            acceptor.accept(a),
            connector.connect(server_name("localhost").unwrap(), b)
        );
        c.expect("client handshake");
        let s = s.expect("server handshake");
        s.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    }

    use rustls::CipherSuite;

    #[tokio::test]
    async fn resumes_with_stateless_tickets() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let c = TestCerts::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(c.server(b"t")));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(c.client(b"t")));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (s, cl) = tokio::join!(
                acceptor.accept(a),
                connector.connect(server_name("localhost").unwrap(), b)
            );
            let (mut s, mut cl) = (s.unwrap(), cl.unwrap());
            // The client takes its tickets in with the first bytes it reads.
            s.write_all(b"x").await.unwrap();
            s.flush().await.unwrap();
            let mut one = [0u8; 1];
            cl.read_exact(&mut one).await.unwrap();
            kinds.push(s.get_ref().1.handshake_kind().unwrap());
        }
        assert_eq!(
            kinds,
            [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
        );
    }

    #[test]
    fn provider_prefers_aes_128_and_keeps_every_suite() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut ring: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        ring.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, ring);
    }

    #[tokio::test]
    async fn aes_128_gcm_is_negotiated() {
        let c = TestCerts::new();
        let suite = negotiated(c.server(b"t"), c.client(b"t")).await;
        assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[tokio::test]
    async fn server_order_wins_over_a_client_preferring_aes_256() {
        let c = TestCerts::new();
        // ring's stock order: AES-256-GCM-SHA384 first.
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&c.device.ca).unwrap())
        .with_client_auth_cert(c.device.chain.clone(), c.device.key.clone_key())
        .unwrap();
        let mut client = client;
        client.alpn_protocols = vec![b"t".to_vec()];
        let suite = negotiated(c.server(b"t"), client).await;
        assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
