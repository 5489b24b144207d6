//! Certificate revocation lists: what a CRL file revokes and until when it
//! may be trusted.
//!
//! A CRL is only as good as it is recent. Ours are issued for
//! [`kakehashi_pki::CRL_VALIDITY_DAYS`] (`nextUpdate`); a CRL past that date
//! may be missing revocations made since, so after a grace period
//! ([`DEFAULT_GRACE`], `[tls] crl_grace`) the gateway, agents and
//! clients refuse connections with `crl_stale` until the CA's current CRL is
//! installed. The grace keeps a forgotten weekly `kakehashi-pki crl` from
//! becoming an outage at once: the metric `kakehashi_crl_next_update_seconds`
//! and its alert warn days before.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;

/// How long a CRL past its `nextUpdate` is still trusted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(72 * 3600);

/// A CRL file, read and parsed once.
#[derive(Debug, Clone)]
pub struct CrlFile {
    /// The CRLs in the file, for rustls.
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    /// Serial numbers they list, as encoded in the certificates.
    pub revoked: HashSet<Vec<u8>>,
    /// When they were issued and until when they are current.
    pub dates: CrlDates,
}

/// The issue date and the `nextUpdate` of a CRL file (several CRLs in one
/// file: the latest issue date and the earliest `nextUpdate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlDates {
    /// `thisUpdate`, Unix seconds.
    pub this_update: i64,
    /// `nextUpdate`, Unix seconds; a CRL without one never goes stale.
    pub next_update: Option<i64>,
}

/// A CRL past `nextUpdate` and its grace period.
#[derive(Debug, Clone, thiserror::Error)]
#[error("crl_stale: the CRL {path} was due for renewal at {next_update} (Unix time) and its grace period of {grace_hours} h has ended; install the CA's current CRL (`kakehashi-pki crl`) there")]
pub struct CrlStale {
    /// The file.
    pub path: String,
    /// Its `nextUpdate`, Unix seconds.
    pub next_update: i64,
    /// The grace period, hours.
    pub grace_hours: u64,
}

impl CrlDates {
    /// Whether the CRL is past `nextUpdate` plus `grace` at `now` (Unix seconds).
    pub fn is_stale(&self, now: i64, grace: Duration) -> bool {
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        self.next_update
            .is_some_and(|next| now > next.saturating_add(grace))
    }

    /// [`CrlDates::is_stale`] as an error naming the file.
    pub fn check(&self, path: &Path, now: i64, grace: Duration) -> Result<(), CrlStale> {
        match self.next_update {
            Some(next_update) if self.is_stale(now, grace) => Err(CrlStale {
                path: path.display().to_string(),
                next_update,
                grace_hours: grace.as_secs() / 3600,
            }),
            _ => Ok(()),
        }
    }
}

impl CrlFile {
    /// Read every CRL in a PEM file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read CRL file {}", path.display()))?;
        Self::parse(&pem, path)
    }

    /// Every CRL in the PEM text `pem` of the file `path` (named in errors).
    pub fn parse(pem: &[u8], path: &Path) -> anyhow::Result<Self> {
        let ders = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("invalid CRL in {}", path.display()))?;
        if ders.is_empty() {
            anyhow::bail!("no CRL in {}", path.display());
        }
        let mut revoked = HashSet::new();
        let mut this_update = i64::MIN;
        let mut next_update: Option<i64> = None;
        for der in &ders {
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                .map_err(|e| anyhow::anyhow!("cannot parse CRL {}: {e}", path.display()))?;
            for r in crl.iter_revoked_certificates() {
                revoked.insert(r.raw_serial().to_vec());
            }
            this_update = this_update.max(crl.last_update().timestamp());
            if let Some(n) = crl.next_update() {
                let n = n.timestamp();
                next_update = Some(next_update.map_or(n, |m| m.min(n)));
            }
        }
        Ok(Self {
            ders,
            revoked,
            dates: CrlDates {
                this_update,
                next_update,
            },
        })
    }
}

/// A CRL file that may be replaced while a peer runs: the path, and the
/// modification time of the copy in force. The gateway's certificate
/// verifier and the agent's client configuration both reload through it.
#[derive(Debug)]
pub struct CrlSource {
    path: PathBuf,
    in_force: Mutex<Option<SystemTime>>,
}

impl CrlSource {
    /// Read the file now: at start it must be readable.
    pub fn open(path: PathBuf) -> anyhow::Result<(Self, CrlFile)> {
        let mtime = mtime(&path);
        let file = CrlFile::read(&path)?;
        let src = Self {
            path,
            in_force: Mutex::new(mtime),
        };
        Ok((src, file))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the file changed since the copy in force: read it and `build`
    /// what goes in force from it. The new copy counts as in force only when
    /// both succeed, so a half-written or rejected file is tried again at the
    /// next call while the previous CRL stays. `None`: unchanged.
    pub fn reload_with<T>(
        &self,
        build: impl FnOnce(CrlFile) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        let now = mtime(&self.path);
        let mut in_force = self.in_force.lock().unwrap_or_else(|e| e.into_inner());
        if now == *in_force {
            return None;
        }
        let built = CrlFile::read(&self.path).and_then(build);
        if built.is_ok() {
            *in_force = now;
        }
        Some(built)
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;

    #[test]
    fn stale_only_after_next_update_and_the_grace() {
        let d = CrlDates {
            this_update: 0,
            next_update: Some(100 * H),
        };
        let grace = Duration::from_secs(72 * 3600);
        assert!(!d.is_stale(100 * H, grace));
        assert!(!d.is_stale(172 * H, grace), "the last second of grace");
        assert!(d.is_stale(172 * H + 1, grace));
        assert!(d.is_stale(101 * H, Duration::ZERO));
        let e = d
            .check(Path::new("/etc/kakehashi/crl.pem"), 200 * H, grace)
            .unwrap_err();
        assert!(e.to_string().starts_with("crl_stale: "), "{e}");
        assert!(e.to_string().contains("kakehashi-pki crl"), "{e}");
    }

    #[test]
    fn a_crl_without_next_update_never_goes_stale() {
        let d = CrlDates {
            this_update: 0,
            next_update: None,
        };
        assert!(!d.is_stale(i64::MAX, Duration::ZERO));
    }

    #[test]
    fn reads_our_cas_crl_dates() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca =
            kakehashi_pki::CaDir::init(dir.path(), &kakehashi_pki::InitOptions::default()).unwrap();
        let path = ca.write_crl().unwrap();
        let f = CrlFile::read(&path).unwrap();
        let next = f.dates.next_update.expect("our CA sets nextUpdate");
        assert_eq!(
            next - f.dates.this_update,
            kakehashi_pki::CRL_VALIDITY_DAYS * 86_400
        );
        assert!(f.revoked.is_empty());
    }
}
