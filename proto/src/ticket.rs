//! Session tickets: the gateway's signed statement that a session to a desk
//! is allowed, with its controls and limits.
//!
//! Wire form: `body length (u16, big endian) | body (JSON) | Ed25519 signature (64 bytes)`.
//! The signature covers `"kakehashi-ticket-v1\0" || body`. The agent checks the
//! signature first and parses the body only after, so unsigned bytes never
//! reach the JSON parser. It then checks the version, the validity window,
//! the desk id and single use.

use std::collections::HashMap;

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::message::{valid_id, Controls, Limits};
use crate::reason::Reason;

/// Largest encoded ticket accepted.
pub const MAX_TICKET_LEN: usize = 4096;
/// Ed25519 signature length.
const SIG_LEN: usize = 64;
/// Domain separation prefix of the signed message.
const CONTEXT: &[u8] = b"kakehashi-ticket-v1\0";
/// Ticket format version.
pub const TICKET_VERSION: u8 = 1;
/// How long a freshly signed ticket is valid, in seconds. A ticket is
/// consumed within milliseconds; the margin covers clock skew.
pub const TICKET_LIFETIME_SECS: u64 = 60;
/// Clock skew tolerated on `issued_at`, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Format version, [`TICKET_VERSION`].
    pub v: u8,
    /// Unique session id; also the replay-protection key.
    pub session_id: String,
    /// The desk this session is for.
    pub desk: String,
    /// The laptop's device id (from its certificate).
    pub device: String,
    /// The laptop's terminal class (home, mobile, satellite).
    pub class: String,
    /// The person, once logged in.
    #[serde(default)]
    pub user: Option<String>,
    /// The gateway that signed it.
    pub gateway: String,
    /// Controls the agent enforces.
    pub controls: Controls,
    /// Session limits.
    #[serde(default)]
    pub limits: Limits,
    /// Unix seconds when signed.
    pub issued_at: u64,
    /// Unix seconds after which the ticket is refused.
    pub expires_at: u64,
}

/// Why a ticket is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketError {
    /// The bytes are not a ticket (length, framing or JSON).
    #[error("malformed ticket: {0}")]
    Malformed(String),
    /// No configured gateway key verifies the signature.
    #[error("ticket signature does not verify")]
    BadSignature,
    /// The ticket format version is unknown.
    #[error("unsupported ticket version {0}")]
    Version(u8),
    /// Outside the validity window.
    #[error("ticket expired or not yet valid")]
    Expired,
    /// For another desk.
    #[error("ticket is for desk {got:?}, this agent serves {expected:?}")]
    WrongDesk {
        /// Desk named by the ticket.
        got: String,
        /// Desk of this agent.
        expected: String,
    },
    /// Already used.
    #[error("ticket was already used")]
    Replayed,
    /// The replay cache is full of unexpired tickets; refuse rather than forget.
    #[error("too many tickets in flight")]
    ReplayCacheFull,
}

impl TicketError {
    /// The refusal reason sent to the gateway.
    pub fn reason(&self) -> Reason {
        match self {
            TicketError::Malformed(_) | TicketError::BadSignature | TicketError::Version(_) => {
                Reason::TicketInvalid
            }
            TicketError::Expired => Reason::TicketExpired,
            TicketError::WrongDesk { .. } => Reason::TicketWrongDesk,
            TicketError::Replayed => Reason::TicketReplayed,
            TicketError::ReplayCacheFull => Reason::CapacityFull,
        }
    }
}

/// Signs tickets with the gateway's Ed25519 key.
pub struct TicketSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("public_key", &self.public_key_text())
            .finish()
    }
}

impl TicketSigner {
    /// Wrap a key pair.
    pub fn new(key: Ed25519KeyPair) -> Self {
        Self { key }
    }

    /// The public key as `ed25519:<base64>`, the form agents are configured with.
    pub fn public_key_text(&self) -> String {
        format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(self.key.public_key().as_ref())
        )
    }

    /// Sign the concatenation of `parts` (a context prefix and a body) with
    /// the gateway key: for the other signed messages of the protocol
    /// ([`crate::members`]), each with its own context.
    pub(crate) fn sign_raw(&self, parts: &[&[u8]]) -> [u8; SIG_LEN] {
        let msg = parts.concat();
        let mut out = [0u8; SIG_LEN];
        out.copy_from_slice(self.key.sign(&msg).as_ref());
        out
    }

    /// Encode and sign. Fails if the encoded ticket would exceed
    /// [`MAX_TICKET_LEN`] (which no verifier would accept).
    pub fn sign(&self, claims: &TicketClaims) -> Result<Vec<u8>, TicketError> {
        let body = serde_json::to_vec(claims).map_err(|e| TicketError::Malformed(e.to_string()))?;
        let body_len = match u16::try_from(body.len()) {
            Ok(n) if 2 + body.len() + SIG_LEN <= MAX_TICKET_LEN => n,
            _ => {
                return Err(TicketError::Malformed(format!(
                    "{} bytes of claims is over the limit",
                    body.len()
                )))
            }
        };
        let mut msg = Vec::with_capacity(CONTEXT.len() + body.len());
        msg.extend_from_slice(CONTEXT);
        msg.extend_from_slice(&body);
        let sig = self.key.sign(&msg);
        let mut out = Vec::with_capacity(2 + body.len() + SIG_LEN);
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(sig.as_ref());
        Ok(out)
    }
}

/// Parse `ed25519:<base64 of 32 bytes>`.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let b64 = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or_else(|| "public key must start with \"ed25519:\"".to_string())?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("public key is not base64: {e}"))?;
    raw.try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())
}

/// Verifies tickets against one or more gateway public keys (several during
/// a key rotation).
#[derive(Debug, Clone)]
pub struct TicketVerifier {
    keys: Vec<[u8; 32]>,
}

impl TicketVerifier {
    /// A verifier trusting these keys.
    pub fn new(keys: Vec<[u8; 32]>) -> Self {
        Self { keys }
    }

    /// Whether one of the trusted keys signed the concatenation of `parts`.
    pub(crate) fn verifies(&self, parts: &[&[u8]], sig: &[u8]) -> bool {
        let msg = parts.concat();
        self.keys.iter().any(|k| {
            signature::UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(&msg, sig)
                .is_ok()
        })
    }

    /// Check signature, version, validity window and desk. Single use is
    /// checked separately with a [`ReplayGuard`], after this succeeds.
    pub fn verify(&self, bytes: &[u8], desk: &str, now: u64) -> Result<TicketClaims, TicketError> {
        if bytes.len() > MAX_TICKET_LEN {
            return Err(TicketError::Malformed(format!(
                "{} bytes is over the limit",
                bytes.len()
            )));
        }
        let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
            return Err(TicketError::Malformed("too short".into()));
        };
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() != len + SIG_LEN {
            return Err(TicketError::Malformed("length does not match".into()));
        }
        let (body, sig) = rest.split_at(len);
        let mut msg = Vec::with_capacity(CONTEXT.len() + body.len());
        msg.extend_from_slice(CONTEXT);
        msg.extend_from_slice(body);
        let good = self.keys.iter().any(|k| {
            signature::UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(&msg, sig)
                .is_ok()
        });
        if !good {
            return Err(TicketError::BadSignature);
        }
        let claims: TicketClaims =
            serde_json::from_slice(body).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if claims.v != TICKET_VERSION {
            return Err(TicketError::Version(claims.v));
        }
        if !valid_id(&claims.session_id) || !valid_id(&claims.desk) {
            return Err(TicketError::Malformed("invalid id".into()));
        }
        if now >= claims.expires_at || claims.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TicketError::Expired);
        }
        if claims.desk != desk {
            return Err(TicketError::WrongDesk {
                got: claims.desk,
                expected: desk.to_string(),
            });
        }
        Ok(claims)
    }
}

/// Remembers used session ids until their tickets expire, so a ticket is
/// accepted once. Bounded: when full of unexpired entries it refuses.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard holding at most `capacity` unexpired ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            capacity,
        }
    }

    /// Record the ticket's use; refuse if it was used before.
    pub fn check_and_record(&mut self, claims: &TicketClaims, now: u64) -> Result<(), TicketError> {
        if self.seen.contains_key(&claims.session_id) {
            return Err(TicketError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, exp| *exp > now);
            if self.seen.len() >= self.capacity {
                return Err(TicketError::ReplayCacheFull);
            }
        }
        // Keep the id past expiry plus skew, so it cannot come back while a
        // clock-skewed agent would still take it.
        self.seen.insert(
            claims.session_id.clone(),
            claims.expires_at.saturating_add(MAX_CLOCK_SKEW_SECS),
        );
        Ok(())
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn signer() -> TicketSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        TicketSigner::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn claims(now: u64) -> TicketClaims {
        TicketClaims {
            v: TICKET_VERSION,
            session_id: "s-0123456789abcdef".into(),
            desk: "DESK-1".into(),
            device: "LAPTOP-1".into(),
            class: "home".into(),
            user: None,
            gateway: "gw1".into(),
            controls: Controls::default(),
            limits: Limits::default(),
            issued_at: now,
            expires_at: now + TICKET_LIFETIME_SECS,
        }
    }

    fn verifier(s: &TicketSigner) -> TicketVerifier {
        TicketVerifier::new(vec![parse_public_key(&s.public_key_text()).unwrap()])
    }

    #[test]
    fn valid_ticket_verifies_once() {
        let s = signer();
        let t = s.sign(&claims(1000)).unwrap();
        let v = verifier(&s);
        let c = v.verify(&t, "DESK-1", 1001).unwrap();
        assert_eq!(c, claims(1000));
        let mut guard = ReplayGuard::new(10);
        guard.check_and_record(&c, 1001).unwrap();
        let again = v.verify(&t, "DESK-1", 1002).unwrap();
        assert_eq!(
            guard.check_and_record(&again, 1002),
            Err(TicketError::Replayed)
        );
    }

    #[test]
    fn forged_ticket_is_refused() {
        let s = signer();
        let other = signer();
        let t = other.sign(&claims(1000)).unwrap();
        assert_eq!(
            verifier(&s).verify(&t, "DESK-1", 1001),
            Err(TicketError::BadSignature)
        );
        // Flip one byte of the body: signature no longer matches.
        let mut t = s.sign(&claims(1000)).unwrap();
        t[10] ^= 1;
        assert_eq!(
            verifier(&s).verify(&t, "DESK-1", 1001),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn expired_and_future_tickets_are_refused() {
        let s = signer();
        let t = s.sign(&claims(1000)).unwrap();
        let v = verifier(&s);
        assert_eq!(
            v.verify(&t, "DESK-1", 1000 + TICKET_LIFETIME_SECS),
            Err(TicketError::Expired)
        );
        assert_eq!(
            v.verify(&t, "DESK-1", 1000 - MAX_CLOCK_SKEW_SECS - 1),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn wrong_desk_is_refused() {
        let s = signer();
        let t = s.sign(&claims(1000)).unwrap();
        assert!(matches!(
            verifier(&s).verify(&t, "DESK-2", 1001),
            Err(TicketError::WrongDesk { .. })
        ));
    }

    #[test]
    fn malformed_tickets_are_refused() {
        let v = verifier(&signer());
        for bad in [&[][..], &[0][..], &[0, 5, 1, 2][..], &[0xff; 5000][..]] {
            assert!(matches!(
                v.verify(bad, "DESK-1", 0),
                Err(TicketError::Malformed(_))
            ));
        }
    }

    #[test]
    fn replay_guard_is_bounded_and_forgets_expired() {
        let mut g = ReplayGuard::new(2);
        let mut c = claims(1000);
        for i in 0..2 {
            c.session_id = format!("s{i}");
            g.check_and_record(&c, 1000).unwrap();
        }
        c.session_id = "s2".into();
        assert_eq!(
            g.check_and_record(&c, 1001),
            Err(TicketError::ReplayCacheFull)
        );
        // Once the first two are long expired there is room again.
        g.check_and_record(&c, 1000 + TICKET_LIFETIME_SECS + MAX_CLOCK_SKEW_SECS + 1)
            .unwrap();
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn oversized_claims_are_not_signed() {
        let mut c = claims(1000);
        c.user = Some("u".repeat(MAX_TICKET_LEN));
        assert!(matches!(signer().sign(&c), Err(TicketError::Malformed(_))));
    }

    #[test]
    fn public_key_parsing() {
        assert!(parse_public_key("ed25519:AAAA").is_err());
        assert!(parse_public_key("rsa:AAAA").is_err());
        let s = signer();
        assert!(parse_public_key(&format!("  {}\n", s.public_key_text())).is_ok());
    }
}
