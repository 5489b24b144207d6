//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the CA library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// `init` was asked to create a CA where one already is.
    #[error("a CA already exists in {} (found {}); refusing to overwrite it", dir.display(), dir.join("ca.crt").display())]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
    },

    /// There is no CA in the directory (no `ca.crt`).
    #[error("no CA in {dir}: create one with `kakehashi-pki init --dir {dir}`", dir = dir.display())]
    CaMissing {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// A valid (unrevoked, unexpired) certificate already exists for this identity.
    #[error(
        "{kind} `{id}` already has a valid certificate (serial {serial}); revoke it first with \
         `kakehashi-pki revoke --serial {serial} --reason superseded`"
    )]
    DuplicateId {
        /// `gateway`, `agent` or `device`.
        kind: String,
        /// The gateway name, desk id or device id.
        id: String,
        /// Serial of the certificate that is still valid.
        serial: String,
    },

    /// No certificate with this serial is in the CA's index.
    #[error("no certificate with serial {serial} was issued by this CA")]
    UnknownSerial {
        /// The serial that was looked up (normalised lowercase hex).
        serial: String,
    },

    /// A serial number was not hexadecimal.
    #[error("invalid serial `{given}`: expected hexadecimal digits (colons allowed)")]
    InvalidSerial {
        /// What was given.
        given: String,
    },

    /// The certificate was already revoked.
    #[error("certificate {serial} is already revoked ({reason})")]
    AlreadyRevoked {
        /// The serial.
        serial: String,
        /// The reason recorded at the first revocation.
        reason: String,
    },

    /// An id (gateway name, desk, device or user) is empty, too long or has a forbidden character.
    #[error("invalid {what} `{value}`: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    InvalidId {
        /// Which id was wrong (`gateway name`, `desk id`, `device id`, `user`).
        what: &'static str,
        /// The rejected value.
        value: String,
    },

    /// A terminal class name was not recognised.
    #[error("unknown terminal class `{given}`: valid classes are home, mobile, satellite")]
    InvalidClass {
        /// What was given.
        given: String,
    },

    /// A revocation reason name was not recognised.
    #[error(
        "unknown revocation reason `{given}`: valid reasons are unspecified, key-compromise \
         (aliases: lost, stolen), affiliation-changed, superseded, cessation-of-operation"
    )]
    InvalidReason {
        /// What was given.
        given: String,
    },

    /// A requested validity period is unusable.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// Why.
        reason: String,
    },

    /// The certificate does not carry a Kakehashi identity (or carries a contradictory one).
    #[error("not a Kakehashi certificate: {reason}")]
    NotOurCertificate {
        /// What is missing or wrong.
        reason: String,
    },

    /// A file could not be read, written or renamed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A PEM file could not be read or had no section of the expected kind.
    #[error("cannot read PEM from {}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The index file is not valid JSON of the expected shape.
    #[error("cannot use index {}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A key file holds an unusable key.
    #[error("unusable key in {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why the key was refused.
        reason: String,
    },

    /// A ticket public key line is not `ed25519:<base64 of 32 bytes>`.
    #[error("invalid ticket public key: {reason}")]
    TicketPublicKey {
        /// Why.
        reason: String,
    },

    /// rcgen could not build or sign a certificate or CRL.
    #[error("certificate generation failed")]
    Cert(#[from] rcgen::Error),

    /// A certificate or CRL could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),

    /// The system random number generator or a signing operation failed.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.into();
        move |source| PkiError::Io { path, source }
    }

    pub(crate) fn not_ours(reason: impl Into<String>) -> PkiError {
        PkiError::NotOurCertificate {
            reason: reason.into(),
        }
    }
}
