//! Value types shared by the store's tables, and argument validation.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A SHA-256 digest: an audit record's hash, or the hash of a secret (an
/// enrollment code, a login token, a one-time login code) that the store
/// keeps instead of the secret itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
    /// The all-zero digest: the `prev_hash` of the first audit record.
    pub const ZERO: Hash256 = Hash256([0; 32]);

    /// SHA-256 of `data` (ring).
    pub fn digest(data: impl AsRef<[u8]>) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data.as_ref());
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Hash256(out)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let v = hex::decode(s).map_err(|e| Error::invalid("hash", e.to_string()))?;
        Hash256::try_from(v).map_err(|_| Error::invalid("hash", "expected 32 bytes"))
    }
}

impl TryFrom<Vec<u8>> for Hash256 {
    type Error = Error;
    fn try_from(v: Vec<u8>) -> Result<Self> {
        let arr: [u8; 32] = v.try_into().map_err(|v: Vec<u8>| {
            Error::corrupt("hash", format!("{} bytes, expected 32", v.len()))
        })?;
        Ok(Hash256(arr))
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to recognise a record; never a secret (these are hashes).
        write!(f, "Hash256({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Hash256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash256::from_hex(&hex).map_err(serde::de::Error::custom)
    }
}

/// Declares a closed set of lowercase names stored as TEXT.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The stored (and displayed) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$var),)+
                    other => Err(Error::invalid($what, format!("unknown value {other:?}"))),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }
    };
}

text_enum!(
    /// What a user may do beyond connecting to their own desks.
    Role, "role" {
        /// Ordinary staff.
        Staff = "staff",
        /// Section chief: approves telework plans, reads attendance.
        Chief = "chief",
        /// Security officer: policy, BCP, devices, audit.
        Officer = "officer",
        /// Operator: the ops dashboard and metrics.
        Operator = "operator",
    }
);

text_enum!(
    /// Where a terminal is, from its device certificate.
    DeviceClass, "device class" {
        /// A laptop taken home.
        Home = "home",
        /// A laptop used on the move.
        Mobile = "mobile",
        /// A terminal in a satellite office.
        Satellite = "satellite",
    }
);

text_enum!(
    /// Whether a device may be used.
    DeviceStatus, "device status" {
        /// In service.
        Active = "active",
        /// Blocked by an officer (can be unblocked).
        Blocked = "blocked",
        /// Reported lost.
        Lost = "lost",
        /// Its certificate was revoked.
        Revoked = "revoked",
    }
);

text_enum!(
    /// The network segment a desk PC sits on.
    Segment, "segment" {
        /// LGWAN-connected segment.
        Lgwan = "lgwan",
        /// Internet-connected segment.
        Internet = "internet",
        /// Individual-number (My Number) systems; never reachable.
        Mynumber = "mynumber",
    }
);

text_enum!(
    /// What a desk serves, which decides whether its agent must enforce
    /// session controls.
    DeskService, "desk service" {
        /// A desk PC's RDP server (the default): a session whose controls
        /// restrict anything needs an agent that enforces them.
        Rdp = "rdp",
        /// A service that is not RDP, registered so by an officer (the demo's
        /// echo desk): sessions are admitted without enforcement, and audited
        /// as "controls not enforced: non-RDP desk".
        Other = "other",
    }
);

text_enum!(
    /// Where a telework plan is in its approval.
    PlanStatus, "plan status" {
        /// Waiting for the section chief.
        Submitted = "submitted",
        /// Approved.
        Approved = "approved",
        /// Rejected.
        Rejected = "rejected",
    }
);

/// Checks an id: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn validate_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 {
        return Err(Error::invalid(field, "must be 1 to 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(field, "only A-Z a-z 0-9 . _ - are allowed"));
    }
    Ok(())
}

/// Checks free text: at most `max` bytes, no control characters, and not
/// empty unless `may_be_empty`.
pub(crate) fn validate_text(
    field: &'static str,
    s: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<()> {
    if s.is_empty() && !may_be_empty {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(field, format!("longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// Checks a `YYYY-MM-DD` calendar date (proleptic Gregorian).
pub(crate) fn validate_date(field: &'static str, s: &str) -> Result<()> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        return Err(Error::invalid(field, "expected YYYY-MM-DD"));
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(Error::invalid(field, "month out of range")),
    };
    if d == 0 || d > days {
        return Err(Error::invalid(field, "day out of range"));
    }
    Ok(())
}

/// Random id with a prefix, e.g. `plan-3f9a…` (16 hex digits).
pub(crate) fn random_id(prefix: &str) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::invalid("id", "system random number generator failed"))?;
    Ok(format!("{prefix}-{}", hex::encode(b)))
}

/// Converts a stored integer, reporting a corrupt value instead of panicking.
pub(crate) fn int<T: TryFrom<i64>>(what: &'static str, v: i64) -> Result<T> {
    T::try_from(v).map_err(|_| Error::corrupt(what, format!("{v} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("id", "desk-1234.a_B").is_ok());
        assert!(validate_id("id", &"a".repeat(64)).is_ok());
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", &"a".repeat(65)).is_err());
        assert!(validate_id("id", "a b").is_err());
        assert!(validate_id("id", "a/b").is_err());
        assert!(validate_id("id", "山田").is_err());
    }

    #[test]
    fn dates() {
        assert!(validate_date("d", "2025-02-28").is_ok());
        assert!(validate_date("d", "2024-02-29").is_ok());
        assert!(validate_date("d", "2025-02-29").is_err());
        assert!(validate_date("d", "2000-02-29").is_ok());
        assert!(validate_date("d", "1900-02-29").is_err());
        assert!(validate_date("d", "2025-13-01").is_err());
        assert!(validate_date("d", "2025-1-01").is_err());
        assert!(validate_date("d", "2025-01-00").is_err());
        assert!(validate_date("d", "２０２５-01-01").is_err());
    }

    #[test]
    fn enums_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        for c in DeviceClass::ALL {
            assert_eq!(c.as_str().parse::<DeviceClass>().unwrap(), *c);
        }
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn hash_hex() {
        let h = Hash256::digest(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Hash256::from_hex(&h.to_hex()).unwrap(), h);
        assert!(Hash256::try_from(vec![0u8; 31]).is_err());
    }
}
