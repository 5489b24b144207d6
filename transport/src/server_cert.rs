//! The server's own certificate and key, reloaded when their files change,
//! so a gateway certificate is renewed without a restart: new handshakes
//! present the new certificate, connections already up keep theirs (a TLS
//! connection does not re-present its certificate), nothing is cut.
//!
//! A pair that does not load — unreadable, a key that does not belong to
//! the certificate (the certificate written before its key, say), a
//! certificate already expired — leaves the one in force and is tried
//! again when either file changes once more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{load_certs, load_key, provider, PeerCertFacts};

/// Size and modification time of the certificate and key files.
type Stamp = [(u64, Option<SystemTime>); 2];

/// Presents the certificate in force; see the module docs.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    };
    [one(cert), one(key)]
}

/// The pair in `cert` and `key`, checked: the key signs for the certificate
/// and the certificate has not expired.
fn read(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = load_certs(cert)?;
    let Some(leaf) = chain.first() else {
        bail!("{}: no certificate", cert.display());
    };
    let facts = PeerCertFacts::from_der(leaf)
        .map_err(|e| anyhow::anyhow!("{}: unreadable certificate: {e:?}", cert.display()))?;
    let now = i64::try_from(crate::unix_now()).unwrap_or(i64::MAX);
    if facts.not_after < now {
        bail!("{}: the certificate has expired", cert.display());
    }
    let der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("{}: unusable private key", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().with_context(|| {
        format!(
            "{} does not belong to the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

impl ReloadingCert {
    /// Loads the pair (an error when it does not load).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let seen = stamp(cert, key);
        let current = read(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the pair again if either file changed since the last look.
    /// `Ok(true)` after a reload; an error (the previous pair stays in
    /// force) once per change.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let fresh = read(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(true)
    }

    /// The serial number of the certificate in force (hex), for the log.
    pub fn serial(&self) -> String {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        current
            .end_entity_cert()
            .ok()
            .and_then(|c| PeerCertFacts::from_der(c).ok())
            .map(|f| kakehashi_pki::hex_serial_bytes(&f.serial))
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway certificate for `name` from `ca`: (certificate, key).
    fn pair(ca: &mut kakehashi_pki::CaDir, name: &str) -> (PathBuf, PathBuf) {
        let i = ca
            .issue(&kakehashi_pki::IssueRequest::new(
                kakehashi_pki::Subject::Gateway {
                    name: name.into(),
                    ips: vec![],
                },
            ))
            .unwrap();
        (i.cert_path, i.key_path)
    }

    fn presented(r: &ReloadingCert) -> Vec<u8> {
        r.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_new_pair_replaces_the_old_and_a_bad_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            kakehashi_pki::CaDir::init(dir.path(), &kakehashi_pki::InitOptions::default()).unwrap();
        let (issued_cert, issued_key) = pair(&mut ca, "gw-a.example");
        // The files the gateway reads (the CA's own copies stay as issued).
        let (cert, key) = (
            dir.path().join("gateway.crt"),
            dir.path().join("gateway.key"),
        );
        std::fs::copy(&issued_cert, &cert).unwrap();
        std::fs::copy(&issued_key, &key).unwrap();
        let r = ReloadingCert::load(&cert, &key).unwrap();
        let first = presented(&r);
        assert!(!r.reload_if_changed().unwrap(), "nothing changed");
        // The certificate renewed before its key is written: refused, the
        // old pair stays; once the key follows, the new pair is in force.
        let (new_cert, new_key) = pair(&mut ca, "gw-b.example");
        std::fs::copy(&new_cert, &cert).unwrap();
        let e = r.reload_if_changed().unwrap_err();
        assert!(format!("{e:#}").contains("does not belong"), "{e:#}");
        assert_eq!(presented(&r), first);
        assert!(!r.reload_if_changed().unwrap(), "an error once per change");
        std::fs::copy(&new_key, &key).unwrap();
        assert!(r.reload_if_changed().unwrap());
        assert_ne!(presented(&r), first);
        assert_eq!(presented(&r), load_certs(&new_cert).unwrap()[0].to_vec());
        // An unreadable file: refused, the pair in force stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(r.reload_if_changed().is_err());
        assert_eq!(presented(&r), load_certs(&new_cert).unwrap()[0].to_vec());
    }
}
