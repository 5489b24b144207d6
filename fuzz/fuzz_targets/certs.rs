//! Certificates and CRLs, as our own code reads them after rustls: byte 0
//! picks (modulo 4)
//!
//! - 0: the rest is a DER certificate a peer presented: the identity the
//!   gateway and agent read from it (`kakehashi_pki::identity_from_der`)
//!   and the facts the gateway keeps to re-check it (`PeerCertFacts`). An
//!   identity is only read from a certificate whose facts read too, and a
//!   desk or device id it names is a valid id.
//! - 1: the rest is the DER of a CRL, wrapped in PEM as `kakehashi-pki crl`
//!   writes it, read as the CRL file (`CrlFile::parse`): a CRL that reads
//!   is one CRL with its dates.
//! - 2: the rest is the CRL file's text as it is (PEM armour, several CRLs).
//! - 3: the rest is a `ticket.pub` line (`parse_ticket_public_key`).
#![no_main]

use std::path::Path;

use base64::Engine as _;
use kakehashi_pki::{identity_from_der, parse_ticket_public_key, validate_id, Identity};
use kakehashi_transport::crl::CrlFile;
use kakehashi_transport::tls::PeerCertFacts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let path = Path::new("crl.pem");
    match select % 4 {
        0 => {
            let facts = PeerCertFacts::from_der(rest);
            if let Ok(id) = identity_from_der(rest) {
                assert!(facts.is_ok(), "{id} from a certificate without facts");
                let _ = id.to_string();
                if let Identity::Agent { desk: id } | Identity::Device { id, .. } = &id {
                    assert!(validate_id("id", id).is_ok(), "{id:?}");
                }
            }
        }
        1 => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
            let mut pem = String::from("-----BEGIN X509 CRL-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
                pem.push('\n');
            }
            pem.push_str("-----END X509 CRL-----\n");
            if let Ok(f) = CrlFile::parse(pem.as_bytes(), path) {
                assert_eq!(f.ders.len(), 1);
                assert_eq!(f.ders[0].as_ref(), rest);
            }
        }
        2 => {
            if let Ok(f) = CrlFile::parse(rest, path) {
                assert!(!f.ders.is_empty());
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Err(e) = parse_ticket_public_key(text) {
                    let _ = e.to_string();
                }
            }
        }
    }
});
