//! The gateway's session-ticket signing key (Ed25519).
//!
//! `ticket.key` is a PKCS#8 `PRIVATE KEY` PEM for the gateway; `ticket.pub`
//! is one line, `ed25519:<standard base64 of the 32-byte public key>`, for
//! the agents, which verify every session ticket with it.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::fsutil::{self, Access};
use crate::PkiError;

/// Prefix of the one-line public key format.
pub const TICKET_PUBLIC_PREFIX: &str = "ed25519:";

/// Generates a new Ed25519 key pair and writes `key_path` (0600) and `pub_path`.
pub fn generate_ticket_key(key_path: &Path, pub_path: &Path) -> Result<(), PkiError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| PkiError::Crypto("cannot generate the ticket signing key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| PkiError::Crypto("generated ticket signing key is unusable"))?;
    let pem = crate::der::pem_encode("PRIVATE KEY", pkcs8.as_ref());
    fsutil::write_atomic(key_path, pem.as_bytes(), Access::Secret)?;
    let line = format_ticket_public_key(pair.public_key().as_ref());
    fsutil::write_atomic(pub_path, line.as_bytes(), Access::Public)
}

/// Formats a raw Ed25519 public key as the `ticket.pub` line (with newline).
pub fn format_ticket_public_key(public_key: &[u8]) -> String {
    format!(
        "{TICKET_PUBLIC_PREFIX}{}\n",
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

/// Loads the ticket signing key from its PKCS#8 PEM file (`ticket.key`).
pub fn load_ticket_signing_key(path: &Path) -> Result<Ed25519KeyPair, PkiError> {
    let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|source| PkiError::Pem {
        path: path.to_owned(),
        source,
    })?;
    let bytes = der.secret_pkcs8_der();
    // Our own keys are PKCS#8 v2 (with the public key), which `from_pkcs8`
    // checks; keys made elsewhere (e.g. openssl genpkey) are often v1.
    Ed25519KeyPair::from_pkcs8(bytes)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes))
        .map_err(|e| PkiError::Key {
            path: path.to_owned(),
            reason: format!("not an Ed25519 PKCS#8 key ({e})"),
        })
}

/// Parses a `ticket.pub` line: `ed25519:<standard base64 of 32 bytes>`.
pub fn parse_ticket_public_key(text: &str) -> Result<[u8; 32], PkiError> {
    let bad = |reason: &str| PkiError::TicketPublicKey {
        reason: reason.to_owned(),
    };
    let b64 = text
        .trim()
        .strip_prefix(TICKET_PUBLIC_PREFIX)
        .ok_or_else(|| bad("expected a line starting with `ed25519:`"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("the key is not standard base64"))?;
    bytes
        .try_into()
        .map_err(|_| bad("an Ed25519 public key is 32 bytes"))
}

/// Reads and parses a `ticket.pub` file.
pub fn load_ticket_public_key(path: &Path) -> Result<[u8; 32], PkiError> {
    parse_ticket_public_key(&fsutil::read_text(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn generated_key_signs_and_public_line_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ticket.key");
        let public = dir.path().join("ticket.pub");
        generate_ticket_key(&key, &public).unwrap();

        let text = std::fs::read_to_string(&public).unwrap();
        assert!(text.starts_with("ed25519:") && text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        let raw = load_ticket_public_key(&public).unwrap();

        let pair = load_ticket_signing_key(&key).unwrap();
        assert_eq!(pair.public_key().as_ref(), raw);
        let sig = pair.sign(b"ticket body");
        UnparsedPublicKey::new(&ED25519, raw)
            .verify(b"ticket body", sig.as_ref())
            .unwrap();
        assert!(UnparsedPublicKey::new(&ED25519, raw)
            .verify(b"other body", sig.as_ref())
            .is_err());
    }

    #[test]
    fn bad_public_lines_are_refused() {
        assert!(parse_ticket_public_key("rsa:AAAA").is_err());
        assert!(parse_ticket_public_key("ed25519:!!!").is_err());
        assert!(parse_ticket_public_key("ed25519:AAAA").is_err());
    }

    #[test]
    fn missing_key_file_is_a_pem_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_ticket_signing_key(&dir.path().join("none.key")).unwrap_err();
        assert!(matches!(err, PkiError::Pem { .. }), "{err:?}");
    }
}
