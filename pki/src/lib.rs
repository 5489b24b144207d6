//! Kakehashi private CA.
//!
//! One directory holds the CA (see [`CaDir`]): an ECDSA P-256 root that signs
//!
//! - **gateway** certificates (server: dNSName + IP SANs, EKU serverAuth),
//! - **agent** certificates for desk PCs (client: URI `urn:kakehashi:desk:<ID>`),
//! - **device** certificates for loaned terminals (client: URI
//!   `urn:kakehashi:device:<ID>`, optional `urn:kakehashi:user:<USER>`, and the
//!   terminal class in a private extension, [`TERMINAL_CLASS_OID`]),
//!
//! keeps an index of what it issued, revokes, and publishes a CRL. `init` also
//! creates the gateway's Ed25519 session-ticket signing key
//! ([`load_ticket_signing_key`], [`load_ticket_public_key`]).
//!
//! [`identity_from_der`] reads the identity back from a peer certificate; the
//! gateway uses it after the TLS handshake has verified the chain.
//!
//! The `kakehashi-pki` binary is a thin command line over this library; see
//! `docs/pki.md`.

// Library hygiene (issue #17): every public item documented and reachable,
// no silent narrowing `as` casts. Per crate, not workspace-wide: the gateway is not ready.
#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

mod ca;
mod der;
mod error;
mod fsutil;
mod identity;
mod ticket;

pub use ca::{
    CaDir, InitOptions, IssueRequest, Issued, Record, Revocation, RevokeReason, Subject, Validity,
    AGENT_VALIDITY_DAYS, CA_VALIDITY_DAYS, CRL_VALIDITY_DAYS, DEVICE_VALIDITY_DAYS,
    GATEWAY_VALIDITY_DAYS,
};
pub use error::PkiError;
pub use identity::{
    hex_serial_bytes, identity_from_der, normalize_serial, serial_hex, validate_id, Identity,
    TerminalClass, DESK_URI_PREFIX, DEVICE_URI_PREFIX, MAX_ID_LEN, TERMINAL_CLASS_OID,
    USER_URI_PREFIX,
};
/// Writes a secret (mode 0600 from the start) atomically: temporary file,
/// sync, rename. For key material other crates keep on disk.
pub fn write_secret_file(path: &std::path::Path, contents: &[u8]) -> Result<(), PkiError> {
    fsutil::write_atomic(path, contents, fsutil::Access::Secret)
}

pub use ticket::{
    format_ticket_public_key, generate_ticket_key, load_ticket_public_key, load_ticket_signing_key,
    parse_ticket_public_key, TICKET_PUBLIC_PREFIX,
};
