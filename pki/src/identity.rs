//! What a certificate says it is, and how to read that back from DER.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use crate::der::{self, TAG_OID, TAG_UTF8STRING};
use crate::PkiError;

/// OID of the private, non-critical extension holding the terminal class of a
/// device certificate (a UUID-derived OID under `2.25`, ITU-T X.667).
/// Its value is a DER UTF8String: `home`, `mobile` or `satellite`.
pub const TERMINAL_CLASS_OID: &str = "2.25.184735923487109138493761095723917234563.1";

/// URI prefix of an agent (desk) certificate's identity.
pub const DESK_URI_PREFIX: &str = "urn:kakehashi:desk:";
/// URI prefix of a device (terminal) certificate's identity.
pub const DEVICE_URI_PREFIX: &str = "urn:kakehashi:device:";
/// URI prefix of the user a device is lent to.
pub const USER_URI_PREFIX: &str = "urn:kakehashi:user:";

/// Content octets of [`TERMINAL_CLASS_OID`].
pub(crate) static TERMINAL_CLASS_OID_DER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    der::encode_oid(&der::parse_oid(TERMINAL_CLASS_OID).expect("constant OID is well formed"))
});

/// Longest id accepted, in characters.
pub const MAX_ID_LEN: usize = 64;

/// Where a loaned terminal is used; written into its device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalClass {
    /// Working from home.
    Home,
    /// Mobile work (travel, outside visits).
    Mobile,
    /// Satellite office.
    Satellite,
}

impl TerminalClass {
    /// All classes, in a stable order.
    pub const ALL: [TerminalClass; 3] = [
        TerminalClass::Home,
        TerminalClass::Mobile,
        TerminalClass::Satellite,
    ];

    /// The lowercase name, as written in certificates and files.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalClass::Home => "home",
            TerminalClass::Mobile => "mobile",
            TerminalClass::Satellite => "satellite",
        }
    }
}

impl fmt::Display for TerminalClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TerminalClass {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TerminalClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| PkiError::InvalidClass {
                given: s.to_owned(),
            })
    }
}

/// What a certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A gateway server certificate.
    Gateway {
        /// The DNS name (first dNSName SAN).
        name: String,
    },
    /// An agent on a desk PC.
    Agent {
        /// The desk id.
        desk: String,
    },
    /// A loaned terminal.
    Device {
        /// The device id.
        id: String,
        /// Where it is used.
        class: TerminalClass,
        /// The person it is lent to, when the certificate names one.
        user: Option<String>,
    },
}

impl Identity {
    /// `gateway`, `agent` or `device`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Gateway { .. } => "gateway",
            Identity::Agent { .. } => "agent",
            Identity::Device { .. } => "device",
        }
    }

    /// The gateway name, desk id or device id.
    pub fn id(&self) -> &str {
        match self {
            Identity::Gateway { name } => name,
            Identity::Agent { desk } => desk,
            Identity::Device { id, .. } => id,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())?;
        if let Identity::Device { class, user, .. } = self {
            write!(f, " (class {class}")?;
            if let Some(user) = user {
                write!(f, ", user {user}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Checks an id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
/// `what` names the id in the error (`device id`, `user`…).
pub fn validate_id(what: &'static str, value: &str) -> Result<(), PkiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidId {
            what,
            value: value.to_owned(),
        })
    }
}

fn parse_cert(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::Parse(
            "trailing data after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// Lowercase hex of a serial's bytes, without leading zero bytes (at least one byte).
pub fn hex_serial_bytes(raw: &[u8]) -> String {
    let skip = raw
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(raw.len().saturating_sub(1));
    hex::encode(&raw[skip..])
}

/// Normalises a serial typed by a person: lowercase, colons removed, no
/// leading zero bytes.
pub fn normalize_serial(given: &str) -> Result<String, PkiError> {
    let cleaned: String = given
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let padded = if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    };
    match hex::decode(&padded) {
        Ok(bytes) if !bytes.is_empty() => Ok(hex_serial_bytes(&bytes)),
        _ => Err(PkiError::InvalidSerial {
            given: given.to_owned(),
        }),
    }
}

/// Lowercase hex of the certificate's serial number (no leading zero bytes).
pub fn serial_hex(der: &[u8]) -> Result<String, PkiError> {
    let cert = parse_cert(der)?;
    Ok(hex_serial_bytes(cert.raw_serial()))
}

/// Reads the terminal class extension value (a DER UTF8String).
fn parse_class_value(value: &[u8]) -> Result<TerminalClass, PkiError> {
    let string = der::read_tlv(value, 0)
        .ok()
        .filter(|t| t.tag == TAG_UTF8STRING && t.whole.end == value.len())
        .ok_or_else(|| PkiError::not_ours("terminal class extension is not a UTF8String"))?;
    let text = std::str::from_utf8(&value[string.content])
        .map_err(|_| PkiError::not_ours("terminal class extension is not UTF-8"))?;
    text.parse()
        .map_err(|_| PkiError::not_ours(format!("unknown terminal class `{text}`")))
}

/// Parses an end-entity certificate (DER) with x509-parser and reads our
/// identity back.
///
/// This reads what the certificate *claims*; it does not check the signature,
/// the chain, the validity period or revocation (the TLS layer and the CRL do).
///
/// - agent: URI SAN `urn:kakehashi:desk:<ID>` and EKU clientAuth;
/// - device: URI SAN `urn:kakehashi:device:<ID>` (optionally
///   `urn:kakehashi:user:<USER>`), EKU clientAuth and the terminal class
///   extension ([`TERMINAL_CLASS_OID`]), which is required;
/// - gateway: no Kakehashi URI, EKU serverAuth and a dNSName SAN.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse_cert(der)?;
    if cert.is_ca() {
        return Err(PkiError::not_ours("this is a CA certificate"));
    }

    let mut desk = None;
    let mut device = None;
    let mut user = None;
    let mut dns_names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(format!("subjectAltName: {e}")))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::URI(uri) => {
                let slots = [
                    (DESK_URI_PREFIX, &mut desk),
                    (DEVICE_URI_PREFIX, &mut device),
                    (USER_URI_PREFIX, &mut user),
                ];
                let slot = slots
                    .into_iter()
                    .find_map(|(prefix, slot)| uri.strip_prefix(prefix).map(|v| (slot, v)));
                if let Some((slot, value)) = slot {
                    if slot.replace(value.to_owned()).is_some() {
                        return Err(PkiError::not_ours(format!("repeated identity URI `{uri}`")));
                    }
                }
            }
            GeneralName::DNSName(name) => dns_names.push(*name),
            _ => {}
        }
    }

    let eku = cert
        .extended_key_usage()
        .map_err(|e| PkiError::Parse(format!("extendedKeyUsage: {e}")))?
        .map(|e| e.value);
    let client_auth = eku.is_some_and(|e| e.client_auth);
    let server_auth = eku.is_some_and(|e| e.server_auth);

    let class_ext = cert
        .iter_extensions()
        .filter(|ext| ext.oid.as_bytes() == TERMINAL_CLASS_OID_DER.as_slice())
        .collect::<Vec<_>>();
    if class_ext.len() > 1 {
        return Err(PkiError::not_ours("more than one terminal class extension"));
    }
    let class_ext = class_ext.first();

    match (desk, device) {
        (Some(_), Some(_)) => Err(PkiError::not_ours(
            "certificate names both a desk and a device",
        )),
        (Some(desk), None) => {
            if !client_auth {
                return Err(PkiError::not_ours("agent certificate without clientAuth"));
            }
            if class_ext.is_some() || user.is_some() {
                return Err(PkiError::not_ours(
                    "agent certificate carries device attributes",
                ));
            }
            validate_id("desk id", &desk)?;
            Ok(Identity::Agent { desk })
        }
        (None, Some(id)) => {
            if !client_auth {
                return Err(PkiError::not_ours("device certificate without clientAuth"));
            }
            let ext = class_ext.ok_or_else(|| {
                PkiError::not_ours(format!(
                    "device certificate has no terminal class extension ({TERMINAL_CLASS_OID})"
                ))
            })?;
            let class = parse_class_value(ext.value)?;
            validate_id("device id", &id)?;
            if let Some(user) = &user {
                validate_id("user", user)?;
            }
            Ok(Identity::Device { id, class, user })
        }
        (None, None) => {
            if class_ext.is_some() || user.is_some() {
                return Err(PkiError::not_ours("device attributes without a device URI"));
            }
            match dns_names.first() {
                Some(name) if server_auth => {
                    validate_id("gateway name", name)?;
                    Ok(Identity::Gateway {
                        name: (*name).to_owned(),
                    })
                }
                _ => Err(PkiError::not_ours(
                    "no desk or device URI, and not a server certificate with a DNS name",
                )),
            }
        }
    }
}

/// The DER encoding (tag, length, content) of [`TERMINAL_CLASS_OID`].
pub(crate) fn terminal_class_oid_tlv() -> Vec<u8> {
    der::tlv(TAG_OID, &TERMINAL_CLASS_OID_DER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for class in TerminalClass::ALL {
            assert_eq!(class.to_string().parse::<TerminalClass>().unwrap(), class);
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{class}\""));
        }
        let err = "office".parse::<TerminalClass>().unwrap_err();
        assert!(err.to_string().contains("home, mobile, satellite"), "{err}");
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "LAPTOP-001", "desk_12.b", &"x".repeat(64)] {
            validate_id("device id", ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", "a:b", &"x".repeat(65)] {
            assert!(
                matches!(
                    validate_id("device id", bad),
                    Err(PkiError::InvalidId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_serial("3F:A2").unwrap(), "3fa2");
        assert_eq!(normalize_serial("003fa2").unwrap(), "3fa2");
        assert_eq!(normalize_serial("fa2").unwrap(), "0fa2");
        assert_eq!(normalize_serial("00").unwrap(), "00");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
    }

    #[test]
    fn class_oid_has_expected_encoding() {
        let der = &*TERMINAL_CLASS_OID_DER;
        assert_eq!(der[0], 0x69); // 2.25
        assert_eq!(*der.last().unwrap(), 0x01); // .1
        assert_eq!(der.len(), 21); // the 128-bit arc takes 19 octets
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            identity_from_der(b"not a certificate"),
            Err(PkiError::Parse(_))
        ));
    }
}
