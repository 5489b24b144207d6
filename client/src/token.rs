//! The login token on disk: one JSON file, mode 0600, written atomically.

use std::path::Path;

use anyhow::Context as _;
use kakehashi_proto::message::Secret;
use serde::{Deserialize, Serialize};

/// What `kakehashi login` keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    /// Who logged in.
    pub user: String,
    /// The token (bound to this laptop's certificate by the gateway).
    pub token: Secret,
    /// Unix time it stops working.
    pub expires_at: u64,
    /// Serial (hex) of this laptop's certificate at login: the gateway binds
    /// the token to it, so after a renewal the token no longer works
    /// ([`StoredToken::for_certificate`]). Absent in files written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
}

/// Why a stored token is not offered to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The laptop's certificate was replaced (renewed) since the login.
    Renewed,
}

impl Stale {
    /// What the person reads, Japanese first.
    pub fn message(&self) -> &'static str {
        match self {
            Stale::Renewed => "この端末の証明書はログインの後に更新されました。もう一度 `kakehashi login` を実行してください。 / This laptop's certificate was renewed after you logged in: run `kakehashi login` again.",
        }
    }
}

impl StoredToken {
    /// The token, unless it was issued for an earlier certificate of this
    /// laptop (`serial`: the certificate now in use; `None` if unreadable).
    pub fn for_certificate(&self, serial: Option<&str>) -> Result<&Self, Stale> {
        match (&self.cert_serial, serial) {
            (Some(at_login), Some(now)) if at_login != now => Err(Stale::Renewed),
            _ => Ok(self),
        }
    }
}

/// The serial (hex) of the first certificate in `cert`, as the gateway sees it.
pub fn cert_serial(cert: &Path) -> Option<String> {
    let certs = kakehashi_transport::tls::load_certs(cert).ok()?;
    kakehashi_pki::serial_hex(certs.first()?).ok()
}

/// Read the token file, if there is one.
pub fn load(path: &Path) -> anyhow::Result<Option<StoredToken>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("{} is not a token file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Write the token file: created with mode 0600 (never chmod afterwards),
/// then renamed into place ([`kakehashi_pki::write_secret_file`]).
pub fn save(path: &Path, t: &StoredToken) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    kakehashi_pki::write_secret_file(path, &serde_json::to_vec_pretty(t)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Remove the token file (no error if it is already gone).
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_with_mode_0600_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub").join("token.json");
        let t = StoredToken {
            user: "u1".into(),
            token: Secret("khs1.x".into()),
            expires_at: 42,
            cert_serial: Some("0a".into()),
        };
        save(&p, &t).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = load(&p).unwrap().unwrap();
        assert_eq!(back.user, "u1");
        assert_eq!(back.token.expose(), "khs1.x");
        remove(&p).unwrap();
        assert!(load(&p).unwrap().is_none());
    }

    #[test]
    fn a_token_from_before_a_renewal_is_not_offered() {
        let t = StoredToken {
            user: "u1".into(),
            token: Secret("khs1.x".into()),
            expires_at: 42,
            cert_serial: Some("0a".into()),
        };
        assert!(t.for_certificate(Some("0a")).is_ok());
        assert_eq!(t.for_certificate(Some("0b")).unwrap_err(), Stale::Renewed);
        assert!(
            t.for_certificate(None).is_ok(),
            "unreadable: the gateway decides"
        );
        // A file from an earlier client has no serial: offered as before.
        let old: StoredToken =
            serde_json::from_str(r#"{"user":"u1","token":"khs1.x","expires_at":42}"#).unwrap();
        assert!(old.for_certificate(Some("0b")).is_ok());
    }
}
