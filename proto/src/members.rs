//! The cluster's member list: which gateways an agent should keep a tunnel
//! to, signed by a gateway, with an expiry and a version.
//!
//! Wire form (the payload of a [`FrameKind::MemberList`](crate::FrameKind)
//! frame): `body length (u16, big endian) | body (JSON) | Ed25519 signature
//! (64 bytes)`, like a [ticket](crate::ticket). The signature covers
//! `"kakehashi-members-v1\0" || body` — another context than tickets, so a
//! signature made for one is never valid for the other. The signed bytes
//! are the bytes sent: there is no re-encoding, so nothing to canonicalise.
//!
//! The list is signed with the gateway's ticket key, and the agent accepts
//! it only under a key it trusts for tickets (`[tickets] public_keys`): the
//! same keys that may order a session to its desk may tell it where the
//! gateways are. The agent checks the signature first and parses the body
//! only after, then the format version, the bounds, the validity window
//! and that the version is not older than the last list it accepted.
//!
//! **Version**: the database's clock (unix seconds) when the gateway read
//! the members from the store. Every gateway of a cluster reads the same
//! database, so a list read later has a version at least as high and
//! reflects every join and leave committed before it, whichever gateway
//! sends it. Two lists of the same second are both accepted (the newer
//! read wins at the next resend).

use serde::{Deserialize, Serialize};

use crate::message::valid_id;
use crate::ticket::{TicketSigner, TicketVerifier, MAX_CLOCK_SKEW_SECS};

/// Largest encoded member list (the frame payload limit).
pub const MAX_MEMBER_LIST_LEN: usize = crate::frame::MAX_PAYLOAD;
/// Most members in one list.
pub const MAX_MEMBERS: usize = 64;
/// Longest address (`host:port`) or server name.
pub const MAX_ADDR_LEN: usize = 255;
/// How long a list is valid after it is signed, in seconds.
pub const MEMBER_LIST_LIFETIME_SECS: u64 = 60;
/// How often a gateway re-signs and resends an unchanged list, in seconds.
pub const MEMBER_LIST_RESEND_SECS: u64 = 20;
/// Format version of the body.
pub const MEMBER_LIST_FORMAT: u8 = 1;
/// Ed25519 signature length.
const SIG_LEN: usize = 64;
/// Domain separation prefix of the signed message.
const CONTEXT: &[u8] = b"kakehashi-members-v1\0";

/// One gateway of the cluster, as an agent dials it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListedMember {
    /// The gateway's name (its member id).
    pub id: String,
    /// `host:port` of its agent listener on TLS over TCP.
    pub tcp: String,
    /// `host:port` of its agent listener on QUIC.
    pub quic: String,
    /// The name its certificate must carry (checked against the pinned CA).
    pub server_name: String,
}

/// What a member list says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// Format version, [`MEMBER_LIST_FORMAT`].
    pub v: u8,
    /// Monotonic across the cluster: the database's clock when the members
    /// were read.
    pub version: u64,
    /// The gateway that signed it.
    pub gateway: String,
    /// Unix seconds when signed (the signing gateway's clock).
    pub issued_at: u64,
    /// Unix seconds after which the list is refused.
    pub expires_at: u64,
    /// The live members.
    pub members: Vec<ListedMember>,
}

/// Why a member list is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberListError {
    /// The bytes are not a member list (length, framing, JSON, bounds).
    #[error("malformed member list: {0}")]
    Malformed(String),
    /// Larger than [`MAX_MEMBER_LIST_LEN`] or more than [`MAX_MEMBERS`] members.
    #[error("member list too large: {0}")]
    TooLarge(String),
    /// No signature at all.
    #[error("member list is not signed")]
    Unsigned,
    /// No trusted gateway key verifies the signature.
    #[error("member list signature does not verify under any trusted gateway key")]
    BadSignature,
    /// The body format version is unknown.
    #[error("unsupported member list format {0}")]
    Format(u8),
    /// Outside its validity window.
    #[error("member list expired or not yet valid")]
    Expired,
    /// Older than the last list accepted (a replay).
    #[error("member list version {got} is older than the accepted version {accepted}")]
    Stale {
        /// Version of this list.
        got: u64,
        /// Version of the last list accepted.
        accepted: u64,
    },
}

impl MemberListError {
    /// A short stable word for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            MemberListError::Malformed(_) => "malformed",
            MemberListError::TooLarge(_) => "too_large",
            MemberListError::Unsigned => "unsigned",
            MemberListError::BadSignature => "bad_signature",
            MemberListError::Format(_) => "format",
            MemberListError::Expired => "expired",
            MemberListError::Stale { .. } => "stale",
        }
    }
}

/// Is `s` a plausible `host:port` or host name: 1–255 of
/// `A-Z a-z 0-9 . - : [ ] _`.
fn valid_addr(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ADDR_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

impl MemberList {
    /// Check the bounds and contents (not the signature or the clock).
    pub fn validate(&self) -> Result<(), MemberListError> {
        if self.v != MEMBER_LIST_FORMAT {
            return Err(MemberListError::Format(self.v));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(MemberListError::TooLarge(format!(
                "{} members (at most {MAX_MEMBERS})",
                self.members.len()
            )));
        }
        if !valid_id(&self.gateway) {
            return Err(MemberListError::Malformed("invalid gateway id".into()));
        }
        for m in &self.members {
            if !valid_id(&m.id) {
                return Err(MemberListError::Malformed("invalid member id".into()));
            }
            if !valid_addr(&m.tcp) || !valid_addr(&m.quic) || !valid_addr(&m.server_name) {
                return Err(MemberListError::Malformed(format!(
                    "invalid address of member {}",
                    m.id
                )));
            }
        }
        Ok(())
    }
}

/// Sign `list` with the gateway's ticket key. Fails when the list breaks a
/// bound, or would encode past [`MAX_MEMBER_LIST_LEN`] (which no agent
/// would accept).
pub fn sign(signer: &TicketSigner, list: &MemberList) -> Result<Vec<u8>, MemberListError> {
    list.validate()?;
    let body = serde_json::to_vec(list).map_err(|e| MemberListError::Malformed(e.to_string()))?;
    let body_len = match u16::try_from(body.len()) {
        Ok(n) if 2 + body.len() + SIG_LEN <= MAX_MEMBER_LIST_LEN => n,
        _ => {
            return Err(MemberListError::TooLarge(format!(
                "{} bytes of body",
                body.len()
            )))
        }
    };
    let sig = signer.sign_raw(&[CONTEXT, &body]);
    let mut out = Vec::with_capacity(2 + body.len() + SIG_LEN);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&sig);
    Ok(out)
}

/// Check a member list: size, signature under one of `keys`' keys, format,
/// bounds, validity window at `now` (with [`MAX_CLOCK_SKEW_SECS`] on
/// `issued_at`), and a version not older than `accepted` (the last list
/// accepted, if any).
pub fn verify(
    keys: &TicketVerifier,
    bytes: &[u8],
    now: u64,
    accepted: Option<u64>,
) -> Result<MemberList, MemberListError> {
    if bytes.len() > MAX_MEMBER_LIST_LEN {
        return Err(MemberListError::TooLarge(format!(
            "{} bytes (at most {MAX_MEMBER_LIST_LEN})",
            bytes.len()
        )));
    }
    let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
        return Err(MemberListError::Malformed("too short".into()));
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() == len {
        return Err(MemberListError::Unsigned);
    }
    if rest.len() != len + SIG_LEN {
        return Err(MemberListError::Malformed("length does not match".into()));
    }
    let (body, sig) = rest.split_at(len);
    if !keys.verifies(&[CONTEXT, body], sig) {
        return Err(MemberListError::BadSignature);
    }
    let list: MemberList =
        serde_json::from_slice(body).map_err(|e| MemberListError::Malformed(e.to_string()))?;
    list.validate()?;
    if now >= list.expires_at || list.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(MemberListError::Expired);
    }
    if let Some(accepted) = accepted {
        if list.version < accepted {
            return Err(MemberListError::Stale {
                got: list.version,
                accepted,
            });
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::parse_public_key;
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    fn signer() -> TicketSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        TicketSigner::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn keys(s: &TicketSigner) -> TicketVerifier {
        TicketVerifier::new(vec![parse_public_key(&s.public_key_text()).unwrap()])
    }

    fn member(i: usize) -> ListedMember {
        ListedMember {
            id: format!("gw{i}"),
            tcp: format!("gw{i}.kakehashi.example.lg.jp:8443"),
            quic: format!("gw{i}.kakehashi.example.lg.jp:8443"),
            server_name: format!("gw{i}.kakehashi.example.lg.jp"),
        }
    }

    fn list(version: u64, now: u64) -> MemberList {
        MemberList {
            v: MEMBER_LIST_FORMAT,
            version,
            gateway: "gw1".into(),
            issued_at: now,
            expires_at: now + MEMBER_LIST_LIFETIME_SECS,
            members: (1..=3).map(member).collect(),
        }
    }

    #[test]
    fn a_signed_list_verifies_and_newer_versions_follow() {
        let s = signer();
        let k = keys(&s);
        let l = list(500, 1000);
        let bytes = sign(&s, &l).unwrap();
        assert_eq!(verify(&k, &bytes, 1001, None).unwrap(), l);
        // The same version again (another gateway, the same second) and a newer one.
        assert_eq!(verify(&k, &bytes, 1001, Some(500)).unwrap(), l);
        let newer = sign(&s, &list(501, 1000)).unwrap();
        assert_eq!(verify(&k, &newer, 1001, Some(500)).unwrap().version, 501);
    }

    #[test]
    fn an_older_version_is_a_replay() {
        let s = signer();
        let bytes = sign(&s, &list(499, 1000)).unwrap();
        assert_eq!(
            verify(&keys(&s), &bytes, 1001, Some(500)),
            Err(MemberListError::Stale {
                got: 499,
                accepted: 500
            })
        );
    }

    #[test]
    fn an_unsigned_list_is_refused() {
        let body = serde_json::to_vec(&list(1, 1000)).unwrap();
        let mut bytes = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        assert_eq!(
            verify(&keys(&signer()), &bytes, 1001, None),
            Err(MemberListError::Unsigned)
        );
    }

    #[test]
    fn a_damaged_or_foreign_signature_is_refused() {
        let s = signer();
        // Signed by a key the agent does not trust for tickets.
        let foreign = sign(&signer(), &list(1, 1000)).unwrap();
        assert_eq!(
            verify(&keys(&s), &foreign, 1001, None),
            Err(MemberListError::BadSignature)
        );
        // One byte of the body changed (a member's address).
        let mut bytes = sign(&s, &list(1, 1000)).unwrap();
        let at = bytes.len() - SIG_LEN - 10;
        bytes[at] ^= 1;
        assert_eq!(
            verify(&keys(&s), &bytes, 1001, None),
            Err(MemberListError::BadSignature)
        );
        // A ticket signature over the same body (other context) does not count.
        let body = serde_json::to_vec(&list(1, 1000)).unwrap();
        let sig = s.sign_raw(&[b"kakehashi-ticket-v1\0", &body]);
        let mut bytes = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&sig);
        assert_eq!(
            verify(&keys(&s), &bytes, 1001, None),
            Err(MemberListError::BadSignature)
        );
    }

    #[test]
    fn an_expired_or_future_list_is_refused() {
        let s = signer();
        let bytes = sign(&s, &list(1, 1000)).unwrap();
        let k = keys(&s);
        assert_eq!(
            verify(&k, &bytes, 1000 + MEMBER_LIST_LIFETIME_SECS, None),
            Err(MemberListError::Expired)
        );
        assert_eq!(
            verify(&k, &bytes, 1000 - MAX_CLOCK_SKEW_SECS - 1, None),
            Err(MemberListError::Expired)
        );
    }

    #[test]
    fn oversized_and_malformed_lists_are_refused() {
        let s = signer();
        let k = keys(&s);
        let mut big = list(1, 1000);
        big.members = (0..=MAX_MEMBERS).map(member).collect();
        assert!(matches!(sign(&s, &big), Err(MemberListError::TooLarge(_))));
        assert!(matches!(
            verify(&k, &vec![0; MAX_MEMBER_LIST_LEN + 1], 1001, None),
            Err(MemberListError::TooLarge(_))
        ));
        for bad in [&[][..], &[0][..], &[0, 5, 1, 2][..]] {
            assert!(matches!(
                verify(&k, bad, 1001, None),
                Err(MemberListError::Malformed(_))
            ));
        }
        let damages: [fn(&mut ListedMember); 4] = [
            |m| m.tcp = "gw 1:8443".into(),
            |m| m.quic = String::new(),
            |m| m.server_name = "x".repeat(MAX_ADDR_LEN + 1),
            |m| m.id = "../gw".into(),
        ];
        for damage in damages {
            let mut l = list(1, 1000);
            damage(&mut l.members[0]);
            assert!(matches!(sign(&s, &l), Err(MemberListError::Malformed(_))));
        }
        let mut l = list(1, 1000);
        l.v = 2;
        assert_eq!(sign(&s, &l), Err(MemberListError::Format(2)));
    }

    #[test]
    fn sixty_four_long_members_still_fit_a_frame() {
        let s = signer();
        let mut l = list(1, 1000);
        l.members = (0..MAX_MEMBERS)
            .map(|i| ListedMember {
                id: format!("gateway-{i:02}"),
                tcp: format!("{}.example.lg.jp:8443", "a".repeat(20)),
                quic: format!("{}.example.lg.jp:8443", "a".repeat(20)),
                server_name: format!("{}.example.lg.jp", "a".repeat(20)),
            })
            .collect();
        let bytes = sign(&s, &l).unwrap();
        assert!(bytes.len() <= MAX_MEMBER_LIST_LEN);
        assert_eq!(verify(&keys(&s), &bytes, 1001, None).unwrap(), l);
    }
}
