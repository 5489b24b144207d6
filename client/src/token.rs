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
}
