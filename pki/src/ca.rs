//! The CA kept in a directory: init, open, issue, revoke, CRL.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::der::{self, TAG_OID, TAG_UTF8STRING};
use crate::fsutil::{self, Access};
use crate::identity::{
    self, terminal_class_oid_tlv, validate_id, DESK_URI_PREFIX, DEVICE_URI_PREFIX, USER_URI_PREFIX,
};
use crate::{ticket, PkiError, TerminalClass};

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const CRL_FILE: &str = "crl.pem";
const INDEX_FILE: &str = "index.json";
const TICKET_KEY_FILE: &str = "ticket.key";
const TICKET_PUB_FILE: &str = "ticket.pub";

/// Lifetime of the CA certificate.
pub const CA_VALIDITY_DAYS: u32 = 3652;
/// Default lifetime of a gateway certificate (the CA/Browser Forum ceiling).
pub const GATEWAY_VALIDITY_DAYS: u32 = 397;
/// Default lifetime of an agent (desk) certificate.
pub const AGENT_VALIDITY_DAYS: u32 = 730;
/// Default lifetime of a device (terminal) certificate.
pub const DEVICE_VALIDITY_DAYS: u32 = 365;
/// How long a CRL is valid: `nextUpdate` is this many days after `thisUpdate`.
pub const CRL_VALIDITY_DAYS: i64 = 7;
/// `notBefore` is set this far in the past to tolerate clock skew on laptops.
const BACKDATE: Duration = Duration::minutes(10);

/// Placeholder OID arcs for the terminal class extension; see `der.rs`.
/// `2.25.A.B.1` with A taking 9 octets and B 10, like the real 128-bit arc's 19.
const CLASS_PLACEHOLDER_ARCS: [u64; 5] =
    [2, 25, (1 << 62) | 0x4b41_4b45, u64::MAX ^ 0x4841_5348, 1];

/// Options for [`CaDir::init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Organization (O) of the CA's name.
    pub organization: String,
    /// Common name (CN) of the CA.
    pub common_name: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            organization: "Kakehashi".to_owned(),
            common_name: "Kakehashi Private CA".to_owned(),
        }
    }
}

/// Who a new certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A gateway: server certificate for `name`, plus IP addresses.
    Gateway {
        /// DNS name clients dial.
        name: String,
        /// IP addresses clients may dial directly.
        ips: Vec<IpAddr>,
    },
    /// An agent on a desk PC.
    Agent {
        /// The desk id.
        desk: String,
    },
    /// A loaned terminal.
    Device {
        /// The device id (asset tag).
        id: String,
        /// Where it is used.
        class: TerminalClass,
        /// The person it is lent to, if fixed.
        user: Option<String>,
    },
}

impl Subject {
    /// `gateway`, `agent` or `device`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Gateway { .. } => "gateway",
            Subject::Agent { .. } => "agent",
            Subject::Device { .. } => "device",
        }
    }

    /// The gateway name, desk id or device id.
    pub fn id(&self) -> &str {
        match self {
            Subject::Gateway { name, .. } => name,
            Subject::Agent { desk } => desk,
            Subject::Device { id, .. } => id,
        }
    }

    /// Default lifetime in days for this kind.
    pub fn default_days(&self) -> u32 {
        match self {
            Subject::Gateway { .. } => GATEWAY_VALIDITY_DAYS,
            Subject::Agent { .. } => AGENT_VALIDITY_DAYS,
            Subject::Device { .. } => DEVICE_VALIDITY_DAYS,
        }
    }
}

/// How long a new certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now (less a few minutes for clock skew) for this many days.
    Days(u32),
    /// Exact bounds; meant for tests (e.g. an already expired certificate).
    Explicit {
        /// Start of validity.
        not_before: OffsetDateTime,
        /// End of validity.
        not_after: OffsetDateTime,
    },
}

/// A request to [`CaDir::issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Who the certificate is for.
    pub subject: Subject,
    /// `None`: the default for the kind.
    pub validity: Option<Validity>,
    /// Where to write the certificate and key; `None`: the CA directory.
    pub out_dir: Option<PathBuf>,
}

impl IssueRequest {
    /// A request with the default validity, written to the CA directory.
    pub fn new(subject: Subject) -> Self {
        IssueRequest {
            subject,
            validity: None,
            out_dir: None,
        }
    }
}

/// What [`CaDir::issue`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_path: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key_path: PathBuf,
    /// Lowercase hex serial.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Why a certificate is revoked (RFC 5280 reason codes we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// No particular reason.
    Unspecified,
    /// The private key may be known to someone else (device lost or stolen).
    KeyCompromise,
    /// The holder moved (another department, left).
    AffiliationChanged,
    /// Replaced by a new certificate.
    Superseded,
    /// No longer used (device retired, desk removed).
    CessationOfOperation,
}

impl RevokeReason {
    /// All reasons, in a stable order.
    pub const ALL: [RevokeReason; 5] = [
        RevokeReason::Unspecified,
        RevokeReason::KeyCompromise,
        RevokeReason::AffiliationChanged,
        RevokeReason::Superseded,
        RevokeReason::CessationOfOperation,
    ];

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Unspecified => "unspecified",
            RevokeReason::KeyCompromise => "key-compromise",
            RevokeReason::AffiliationChanged => "affiliation-changed",
            RevokeReason::Superseded => "superseded",
            RevokeReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    fn to_rcgen(self) -> RevocationReason {
        match self {
            RevokeReason::Unspecified => RevocationReason::Unspecified,
            RevokeReason::KeyCompromise => RevocationReason::KeyCompromise,
            RevokeReason::AffiliationChanged => RevocationReason::AffiliationChanged,
            RevokeReason::Superseded => RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevokeReason {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        if matches!(lower.as_str(), "lost" | "stolen") {
            return Ok(RevokeReason::KeyCompromise);
        }
        RevokeReason::ALL
            .into_iter()
            .find(|r| r.as_str() == lower)
            .ok_or_else(|| PkiError::InvalidReason {
                given: s.to_owned(),
            })
    }
}

/// One issued certificate, as kept in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Lowercase hex serial.
    pub serial: String,
    /// `gateway`, `agent` or `device`.
    pub kind: String,
    /// Gateway name, desk id or device id.
    pub id: String,
    /// Terminal class (devices only).
    pub class: Option<TerminalClass>,
    /// User (devices only, when given).
    pub user: Option<String>,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
}

impl Record {
    /// Unrevoked and not expired at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked.is_none() && self.not_after > now
    }
}

/// When and why a certificate was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Unix seconds.
    pub at: i64,
    /// Kebab-case reason name (see [`RevokeReason`]).
    pub reason: String,
}

/// `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    /// Number of the last CRL written (0: none yet).
    crl_number: u64,
    records: Vec<Record>,
}

/// A CA kept in a directory (`ca.crt`, `ca.key`, `index.json`, `crl.pem`,
/// `ticket.key`, `ticket.pub`).
pub struct CaDir {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_not_after: OffsetDateTime,
    index: Index,
}

impl fmt::Debug for CaDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaDir")
            .field("dir", &self.dir)
            .field("records", &self.index.records.len())
            .field("crl_number", &self.index.crl_number)
            .finish_non_exhaustive()
    }
}

fn now_utc() -> OffsetDateTime {
    // Whole seconds: certificates and the index have no finer resolution.
    let now = OffsetDateTime::now_utc();
    now - Duration::nanoseconds(i64::from(now.nanosecond()))
}

/// 16 random bytes with the top bit cleared (a positive DER INTEGER).
fn random_serial() -> Result<[u8; 16], PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("system random number generator failed"))?;
    bytes[0] &= 0x7f;
    Ok(bytes)
}

fn read_cert_pem(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_file(path).map_err(|source| PkiError::Pem {
        path: path.to_owned(),
        source,
    })
}

fn parse_err(e: impl fmt::Display) -> PkiError {
    PkiError::Parse(e.to_string())
}

impl CaDir {
    /// Creates a new CA in `dir` (created if needed, mode 0700 on Unix): an
    /// ECDSA P-256 self-signed certificate valid ten years, its key, an empty
    /// index, an empty CRL, and the gateway's Ed25519 ticket signing key.
    ///
    /// Fails with [`PkiError::CaExists`] when `dir/ca.crt` exists.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<CaDir, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        if cert_path.exists() {
            return Err(PkiError::CaExists {
                dir: dir.to_owned(),
            });
        }
        create_private_dir(dir)?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, opts.organization.as_str());
        name.push(DnType::CommonName, opts.common_name.as_str());
        params.distinguished_name = name;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(CA_VALIDITY_DAYS));
        // Path length 0: this CA signs end-entity certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;

        // ca.crt goes last: until it exists, `init` can simply be run again.
        fsutil::write_atomic(
            &dir.join(CA_KEY_FILE),
            key.serialize_pem().as_bytes(),
            Access::Secret,
        )?;
        ticket::generate_ticket_key(&dir.join(TICKET_KEY_FILE), &dir.join(TICKET_PUB_FILE))?;
        let index = Index::default();
        save_index(&dir.join(INDEX_FILE), &index)?;
        fsutil::write_atomic(
            &cert_path,
            der::pem_encode("CERTIFICATE", cert.der()).as_bytes(),
            Access::Public,
        )?;

        let mut ca = CaDir {
            dir: dir.to_owned(),
            issuer: Issuer::new(params.clone(), key),
            ca_not_after: params.not_after,
            index,
        };
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`; [`PkiError::CaMissing`] when there is none.
    pub fn open(dir: &Path) -> Result<CaDir, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        if !cert_path.exists() {
            return Err(PkiError::CaMissing {
                dir: dir.to_owned(),
            });
        }
        let ca_der = read_cert_pem(&cert_path)?;
        let key_path = dir.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(&fsutil::read_text(&key_path)?).map_err(|e| PkiError::Key {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;

        let (_, cert) = x509_parser::parse_x509_certificate(&ca_der).map_err(parse_err)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Key {
                path: key_path,
                reason: format!("it does not belong to {}", cert_path.display()),
            });
        }
        let ca_not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)?;

        let index_path = dir.join(INDEX_FILE);
        let index = serde_json::from_str(&fsutil::read_text(&index_path)?).map_err(|source| {
            PkiError::Index {
                path: index_path,
                source,
            }
        })?;

        Ok(CaDir {
            dir: dir.to_owned(),
            issuer,
            ca_not_after,
            index,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca.crt` (PEM): the trust anchor for gateways, agents and clients.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// `DIR/crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_FILE)
    }

    /// `DIR/ticket.key`: the gateway's Ed25519 ticket signing key (PKCS#8 PEM).
    pub fn ticket_key_path(&self) -> PathBuf {
        self.dir.join(TICKET_KEY_FILE)
    }

    /// `DIR/ticket.pub`: `ed25519:<base64>` line for the agents.
    pub fn ticket_public_path(&self) -> PathBuf {
        self.dir.join(TICKET_PUB_FILE)
    }

    /// `DIR/index.json`.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    /// Number of the last CRL written.
    pub fn crl_number(&self) -> u64 {
        self.index.crl_number
    }

    /// End of validity of the CA certificate.
    pub fn ca_not_after(&self) -> OffsetDateTime {
        self.ca_not_after
    }

    /// Every certificate issued, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.index.records
    }

    /// Issues a certificate and its key (ECDSA P-256) and records it.
    ///
    /// Refuses a second valid certificate for the same kind and id
    /// ([`PkiError::DuplicateId`]): revoke the old one first.
    pub fn issue(&mut self, req: &IssueRequest) -> Result<Issued, PkiError> {
        let subject = &req.subject;
        let kind = subject.kind();
        let id = subject.id();
        match subject {
            Subject::Gateway { name, .. } => validate_id("gateway name", name)?,
            Subject::Agent { desk } => validate_id("desk id", desk)?,
            Subject::Device { id, user, .. } => {
                validate_id("device id", id)?;
                if let Some(user) = user {
                    validate_id("user", user)?;
                }
            }
        }

        let now = now_utc();
        if let Some(old) = self
            .index
            .records
            .iter()
            .find(|r| r.kind == kind && r.id == id && r.is_valid_at(now.unix_timestamp()))
        {
            return Err(PkiError::DuplicateId {
                kind: kind.to_owned(),
                id: id.to_owned(),
                serial: old.serial.clone(),
            });
        }

        let (not_before, not_after) = match req
            .validity
            .unwrap_or(Validity::Days(subject.default_days()))
        {
            Validity::Days(0) => {
                return Err(PkiError::InvalidValidity {
                    reason: "a certificate must be valid for at least one day".into(),
                })
            }
            Validity::Days(days) => (now - BACKDATE, now + Duration::days(i64::from(days))),
            Validity::Explicit {
                not_before,
                not_after,
            } => {
                if not_after <= not_before {
                    return Err(PkiError::InvalidValidity {
                        reason: "not_after must be later than not_before".into(),
                    });
                }
                (not_before, not_after)
            }
        };
        if not_after > self.ca_not_after {
            return Err(PkiError::InvalidValidity {
                reason: format!(
                    "the certificate would outlive the CA certificate (valid until {})",
                    self.ca_not_after.date()
                ),
            });
        }

        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, id);
        params.distinguished_name = name;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let mut class = None;
        let mut user = None;
        match subject {
            Subject::Gateway { name, ips } => {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(name.as_str().try_into()?));
                params
                    .subject_alt_names
                    .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Subject::Agent { desk } => {
                params
                    .subject_alt_names
                    .push(SanType::URI(format!("{DESK_URI_PREFIX}{desk}").try_into()?));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Subject::Device {
                id,
                class: device_class,
                user: device_user,
            } => {
                params
                    .subject_alt_names
                    .push(SanType::URI(format!("{DEVICE_URI_PREFIX}{id}").try_into()?));
                if let Some(u) = device_user {
                    params
                        .subject_alt_names
                        .push(SanType::URI(format!("{USER_URI_PREFIX}{u}").try_into()?));
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(
                        &CLASS_PLACEHOLDER_ARCS,
                        der::tlv(TAG_UTF8STRING, device_class.as_str().as_bytes()),
                    ));
                class = Some(*device_class);
                user.clone_from(device_user);
            }
        }

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_der = if class.is_some() {
            // Swap in the real (128-bit arc) OID and sign again; see der.rs.
            der::replace_in_tbs_and_resign(
                cert.der(),
                &class_placeholder_tlv(),
                &terminal_class_oid_tlv(),
                self.issuer.key(),
            )?
        } else {
            cert.der().to_vec()
        };
        let serial = identity::serial_hex(&cert_der)?;

        let out_dir = req.out_dir.as_deref().unwrap_or(&self.dir);
        fs::create_dir_all(out_dir).map_err(PkiError::io(out_dir))?;
        let cert_path = out_dir.join(format!("{kind}-{id}.crt"));
        let key_path = out_dir.join(format!("{kind}-{id}.key"));
        fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes(), Access::Secret)?;
        fsutil::write_atomic(
            &cert_path,
            der::pem_encode("CERTIFICATE", &cert_der).as_bytes(),
            Access::Public,
        )?;

        let mut index = self.index.clone();
        index.records.push(Record {
            serial: serial.clone(),
            kind: kind.to_owned(),
            id: id.to_owned(),
            class,
            user,
            not_after: not_after.unix_timestamp(),
            revoked: None,
        });
        save_index(&self.index_path(), &index)?;
        self.index = index;

        Ok(Issued {
            cert_path,
            key_path,
            serial,
            not_after,
        })
    }

    /// Marks the certificate with this serial (hex, colons allowed) revoked
    /// in the index. Call [`CaDir::write_crl`] afterwards to publish it.
    pub fn revoke(&mut self, serial_hex: &str, reason: RevokeReason) -> Result<Record, PkiError> {
        let serial = identity::normalize_serial(serial_hex)?;
        let mut index = self.index.clone();
        let record = index
            .records
            .iter_mut()
            .find(|r| r.serial == serial)
            .ok_or_else(|| PkiError::UnknownSerial {
                serial: serial.clone(),
            })?;
        if let Some(previous) = &record.revoked {
            return Err(PkiError::AlreadyRevoked {
                serial,
                reason: previous.reason.clone(),
            });
        }
        record.revoked = Some(Revocation {
            at: now_utc().unix_timestamp(),
            reason: reason.as_str().to_owned(),
        });
        let revoked = record.clone();
        save_index(&self.index_path(), &index)?;
        self.index = index;
        Ok(revoked)
    }

    /// Revokes the certificate in a PEM file (see [`CaDir::revoke`]).
    pub fn revoke_cert_file(
        &mut self,
        cert_pem: &Path,
        reason: RevokeReason,
    ) -> Result<Record, PkiError> {
        let der = read_cert_pem(cert_pem)?;
        let serial = identity::serial_hex(&der)?;
        self.revoke(&serial, reason)
    }

    /// (Re)writes `DIR/crl.pem` atomically, signed by the CA, listing every
    /// revoked certificate; increments the CRL number. `thisUpdate` is now,
    /// `nextUpdate` seven days later.
    pub fn write_crl(&mut self) -> Result<PathBuf, PkiError> {
        self.write_crl_issued_at(now_utc())
    }

    /// [`CaDir::write_crl`] as if issued at `now`: `nextUpdate` is seven
    /// days after it. A date in the past gives a stale CRL, which tests use
    /// to check that peers refuse it.
    pub fn write_crl_issued_at(&mut self, now: OffsetDateTime) -> Result<PathBuf, PkiError> {
        let number = self.index.crl_number + 1;
        let revoked_certs = self
            .index
            .records
            .iter()
            .filter_map(|r| r.revoked.as_ref().map(|rev| (r, rev)))
            .map(|(r, rev)| {
                let serial = hex::decode(&r.serial).map_err(|_| PkiError::InvalidSerial {
                    given: r.serial.clone(),
                })?;
                let reason = RevokeReason::from_str(&rev.reason)?;
                let revocation_time = OffsetDateTime::from_unix_timestamp(rev.at)
                    .map_err(|e| PkiError::Parse(format!("revocation time: {e}")))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time,
                    reason_code: Some(reason.to_rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(CRL_VALIDITY_DAYS),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = params.signed_by(&self.issuer)?.pem()?;

        // Record the number first, so that a number is never used twice.
        let mut index = self.index.clone();
        index.crl_number = number;
        save_index(&self.index_path(), &index)?;
        self.index = index;

        let path = self.crl_path();
        fsutil::write_atomic(&path, pem.as_bytes(), Access::Public)?;
        Ok(path)
    }
}

fn class_placeholder_tlv() -> Vec<u8> {
    let arcs: Vec<u128> = CLASS_PLACEHOLDER_ARCS
        .iter()
        .map(|a| u128::from(*a))
        .collect();
    der::tlv(TAG_OID, &der::encode_oid(&arcs))
}

fn save_index(path: &Path, index: &Index) -> Result<(), PkiError> {
    let mut json = serde_json::to_vec_pretty(index).map_err(|source| PkiError::Index {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    fsutil::write_atomic(path, &json, Access::Public)
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(PkiError::io(dir))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use ring::signature::{KeyPair as _, UnparsedPublicKey, ED25519};
    use rustls_pki_types::{CertificateRevocationListDer, ServerName, UnixTime};
    use x509_parser::{parse_x509_certificate, parse_x509_crl};

    use super::*;
    use crate::{identity_from_der, load_ticket_public_key, load_ticket_signing_key, Identity};

    fn new_ca() -> (tempfile::TempDir, CaDir) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::init(&tmp.path().join("pki"), &InitOptions::default()).unwrap();
        (tmp, ca)
    }

    fn device(id: &str, class: TerminalClass, user: Option<&str>) -> IssueRequest {
        IssueRequest::new(Subject::Device {
            id: id.into(),
            class,
            user: user.map(str::to_owned),
        })
    }

    fn der_of(path: &Path) -> Vec<u8> {
        read_cert_pem(path).unwrap().to_vec()
    }

    fn ca_der(ca: &CaDir) -> Vec<u8> {
        der_of(&ca.ca_cert_path())
    }

    /// Checks the certificate's signature with the CA's public key.
    fn assert_signed_by_ca(ca: &CaDir, cert_der: &[u8]) {
        let ca_der = ca_der(ca);
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        let (_, cert) = parse_x509_certificate(cert_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn init_open_exists_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let ca = CaDir::init(&dir, &InitOptions::default()).unwrap();
        for path in [
            ca.ca_cert_path(),
            ca.crl_path(),
            ca.ticket_key_path(),
            ca.ticket_public_path(),
            ca.index_path(),
            dir.join("ca.key"),
        ] {
            assert!(path.is_file(), "{} missing", path.display());
        }
        assert_eq!(ca.crl_number(), 1);

        let err = CaDir::init(&dir, &InitOptions::default()).unwrap_err();
        assert!(matches!(err, PkiError::CaExists { .. }), "{err:?}");

        let reopened = CaDir::open(&dir).unwrap();
        assert_eq!(reopened.dir(), dir);
        assert_eq!(reopened.crl_number(), 1);
        assert!(reopened.records().is_empty());

        let empty = tmp.path().join("nothing");
        let err = CaDir::open(&empty).unwrap_err();
        assert!(matches!(err, PkiError::CaMissing { .. }), "{err:?}");
        assert!(
            err.to_string().contains("kakehashi-pki init --dir"),
            "{err}"
        );
    }

    #[test]
    fn ca_certificate_is_a_constrained_ten_year_p256_root() {
        let (_tmp, ca) = new_ca();
        let der = ca_der(&ca);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        cert.verify_signature(None).unwrap();
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
        let life =
            cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert!(life >= Duration::days(3652), "{life}");
        assert!(cert
            .subject()
            .to_string()
            .contains("CN=Kakehashi Private CA"));
        assert!(cert.subject().to_string().contains("O=Kakehashi"));
    }

    #[test]
    fn opening_with_a_foreign_key_fails() {
        let (tmp, ca) = new_ca();
        let other = CaDir::init(&tmp.path().join("other"), &InitOptions::default()).unwrap();
        fs::copy(other.dir().join("ca.key"), ca.dir().join("ca.key")).unwrap();
        let err = CaDir::open(ca.dir()).unwrap_err();
        assert!(matches!(err, PkiError::Key { .. }), "{err:?}");
    }

    #[test]
    fn issues_each_kind_and_reads_identity_back() {
        let (_tmp, mut ca) = new_ca();

        let gw = ca
            .issue(&IssueRequest::new(Subject::Gateway {
                name: "gw.example.lg.jp".into(),
                ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))],
            }))
            .unwrap();
        assert_eq!(gw.cert_path, ca.dir().join("gateway-gw.example.lg.jp.crt"));
        assert_eq!(gw.key_path, ca.dir().join("gateway-gw.example.lg.jp.key"));
        let gw_der = der_of(&gw.cert_path);
        assert_eq!(
            identity_from_der(&gw_der).unwrap(),
            Identity::Gateway {
                name: "gw.example.lg.jp".into()
            }
        );
        assert_signed_by_ca(&ca, &gw_der);

        let agent = ca
            .issue(&IssueRequest::new(Subject::Agent {
                desk: "DESK-1234".into(),
            }))
            .unwrap();
        let agent_der = der_of(&agent.cert_path);
        let id = identity_from_der(&agent_der).unwrap();
        assert_eq!(
            id,
            Identity::Agent {
                desk: "DESK-1234".into()
            }
        );
        assert_eq!((id.kind(), id.id()), ("agent", "DESK-1234"));
        assert_signed_by_ca(&ca, &agent_der);

        for (n, class) in TerminalClass::ALL.into_iter().enumerate() {
            let user = (n == 0).then_some("tanaka.taro");
            let dev = ca
                .issue(&device(&format!("LAPTOP-00{n}"), class, user))
                .unwrap();
            let der = der_of(&dev.cert_path);
            assert_eq!(
                identity_from_der(&der).unwrap(),
                Identity::Device {
                    id: format!("LAPTOP-00{n}"),
                    class,
                    user: user.map(str::to_owned),
                }
            );
            // The re-signed certificate still verifies and keeps its serial.
            assert_signed_by_ca(&ca, &der);
            assert_eq!(crate::serial_hex(&der).unwrap(), dev.serial);
        }

        let kinds: Vec<&str> = ca.records().iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["gateway", "agent", "device", "device", "device"]);
        assert_eq!(ca.records()[2].user.as_deref(), Some("tanaka.taro"));
        assert_eq!(ca.records()[3].class, Some(TerminalClass::Mobile));

        // The index survives a reopen.
        let reopened = CaDir::open(ca.dir()).unwrap();
        assert_eq!(reopened.records(), ca.records());
    }

    #[test]
    fn leaf_certificates_have_the_documented_profile() {
        let (_tmp, mut ca) = new_ca();
        let dev = ca
            .issue(&device("LAPTOP-001", TerminalClass::Home, None))
            .unwrap();
        let der = der_of(&dev.cert_path);
        let (_, cert) = parse_x509_certificate(&der).unwrap();

        assert!(!cert.is_ca());
        assert_eq!(cert.subject().to_string(), "CN=LAPTOP-001");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);

        let class_ext = cert
            .extensions()
            .iter()
            .find(|e| decode_oid(e.oid.as_bytes()) == crate::TERMINAL_CLASS_OID)
            .expect("terminal class extension");
        assert!(!class_ext.critical);
        assert_eq!(class_ext.value, [0x0c, 4, b'h', b'o', b'm', b'e']);

        let raw = cert.raw_serial();
        assert!(raw.len() <= 16 && raw[0] & 0x80 == 0);

        let life =
            cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
        assert!(
            life > Duration::days(365) && life < Duration::days(366),
            "{life}"
        );
        assert_eq!(
            cert.validity().not_after.to_datetime().unix_timestamp(),
            dev.not_after.unix_timestamp()
        );
    }

    /// Independent decoder for OID content octets (asn1-rs without its
    /// `bigint` feature cannot print 128-bit arcs).
    fn decode_oid(bytes: &[u8]) -> String {
        let mut arcs = Vec::new();
        let mut acc: u128 = 0;
        for b in bytes {
            acc = (acc << 7) | u128::from(b & 0x7f);
            if b & 0x80 == 0 {
                arcs.push(acc);
                acc = 0;
            }
        }
        let first = arcs.remove(0);
        let (a, b) = if first >= 80 {
            (2, first - 80)
        } else {
            (first / 40, first % 40)
        };
        let mut out = format!("{a}.{b}");
        for arc in arcs {
            out.push_str(&format!(".{arc}"));
        }
        out
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (tmp, mut ca) = new_ca();
        let out = tmp.path().join("out");
        let issued = ca
            .issue(&IssueRequest {
                out_dir: Some(out.clone()),
                ..IssueRequest::new(Subject::Agent { desk: "D1".into() })
            })
            .unwrap();
        assert_eq!(issued.key_path, out.join("agent-D1.key"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&issued.key_path), 0o600);
        assert_eq!(mode(&ca.dir().join("ca.key")), 0o600);
        assert_eq!(mode(&ca.ticket_key_path()), 0o600);
        for public in [&issued.cert_path, &ca.ca_cert_path(), &ca.crl_path()] {
            let m = mode(public);
            assert!(m & 0o444 == 0o444 && m & 0o022 == 0, "{m:o}");
        }
        assert!(fs::read_to_string(&issued.key_path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn duplicate_id_is_refused_until_revoked() {
        let (_tmp, mut ca) = new_ca();
        let first = ca
            .issue(&device("LAPTOP-001", TerminalClass::Home, None))
            .unwrap();
        let err = ca
            .issue(&device("LAPTOP-001", TerminalClass::Mobile, None))
            .unwrap_err();
        match &err {
            PkiError::DuplicateId { kind, id, serial } => {
                assert_eq!((kind.as_str(), id.as_str()), ("device", "LAPTOP-001"));
                assert_eq!(serial, &first.serial);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&format!(
            "kakehashi-pki revoke --serial {} --reason superseded",
            first.serial
        )));

        // Same id, other kind: fine.
        ca.issue(&IssueRequest::new(Subject::Agent {
            desk: "LAPTOP-001".into(),
        }))
        .unwrap();

        ca.revoke(&first.serial, RevokeReason::Superseded).unwrap();
        let second = ca
            .issue(&device("LAPTOP-001", TerminalClass::Mobile, None))
            .unwrap();
        assert_ne!(second.serial, first.serial);
        let der = der_of(&second.cert_path);
        assert!(matches!(
            identity_from_der(&der).unwrap(),
            Identity::Device {
                class: TerminalClass::Mobile,
                ..
            }
        ));
    }

    #[test]
    fn revoke_then_crl_lists_the_serial() {
        let (_tmp, mut ca) = new_ca();
        let keep = ca
            .issue(&device("KEEP", TerminalClass::Home, None))
            .unwrap();
        let lost = ca
            .issue(&device("LOST", TerminalClass::Mobile, Some("sato")))
            .unwrap();

        let record = ca
            .revoke(&lost.serial.to_uppercase(), "lost".parse().unwrap())
            .unwrap();
        assert_eq!(record.serial, lost.serial);
        assert_eq!(record.revoked.as_ref().unwrap().reason, "key-compromise");
        let err = ca
            .revoke(&lost.serial, RevokeReason::Superseded)
            .unwrap_err();
        assert!(matches!(err, PkiError::AlreadyRevoked { .. }), "{err:?}");
        let err = ca.revoke("abcdef", RevokeReason::Superseded).unwrap_err();
        assert!(matches!(err, PkiError::UnknownSerial { .. }), "{err:?}");

        let path = ca.write_crl().unwrap();
        assert_eq!(path, ca.crl_path());
        assert_eq!(ca.crl_number(), 2);

        let crl_der = CertificateRevocationListDer::from_pem_file(&path).unwrap();
        let (_, crl) = parse_x509_crl(&crl_der).unwrap();
        let ca_der = ca_der(&ca);
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
        assert_eq!(crl.crl_number().unwrap().to_string(), "2");
        let listed: Vec<(String, Option<u8>)> = crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    crate::identity::hex_serial_bytes(r.raw_serial()),
                    r.reason_code().map(|(_, c)| c.0),
                )
            })
            .collect();
        assert_eq!(listed, [(lost.serial.clone(), Some(1))]);
        assert!(!listed.iter().any(|(s, _)| *s == keep.serial));
        let next = crl.next_update().unwrap().to_datetime();
        let this = crl.last_update().to_datetime();
        assert_eq!(next - this, Duration::days(7));

        // Revoking by file, and numbers keep increasing across reopen.
        let mut reopened = CaDir::open(ca.dir()).unwrap();
        reopened
            .revoke_cert_file(&keep.cert_path, RevokeReason::CessationOfOperation)
            .unwrap();
        reopened.write_crl().unwrap();
        assert_eq!(reopened.crl_number(), 3);
        let crl_der = CertificateRevocationListDer::from_pem_file(reopened.crl_path()).unwrap();
        let (_, crl) = parse_x509_crl(&crl_der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 2);
    }

    #[test]
    fn explicit_validity_gives_an_expired_certificate() {
        let (_tmp, mut ca) = new_ca();
        let now = OffsetDateTime::now_utc();
        let old = ca
            .issue(&IssueRequest {
                validity: Some(Validity::Explicit {
                    not_before: now - Duration::days(10),
                    not_after: now - Duration::days(1),
                }),
                ..device("OLD", TerminalClass::Satellite, None)
            })
            .unwrap();
        let der = der_of(&old.cert_path);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        assert!(!cert.validity().is_valid());
        assert!(cert.validity().not_after.to_datetime() < now);
        // An expired certificate does not block a new one.
        ca.issue(&device("OLD", TerminalClass::Satellite, None))
            .unwrap();
    }

    #[test]
    fn bad_validity_is_refused() {
        let (_tmp, mut ca) = new_ca();
        let mut req = device("X", TerminalClass::Home, None);
        req.validity = Some(Validity::Days(0));
        assert!(matches!(
            ca.issue(&req),
            Err(PkiError::InvalidValidity { .. })
        ));
        req.validity = Some(Validity::Days(4000));
        assert!(matches!(
            ca.issue(&req),
            Err(PkiError::InvalidValidity { .. })
        ));
        req.validity = Some(Validity::Days(30));
        ca.issue(&req).unwrap();
    }

    #[test]
    fn invalid_ids_are_refused() {
        let (_tmp, mut ca) = new_ca();
        let bad = [
            IssueRequest::new(Subject::Agent { desk: "".into() }),
            IssueRequest::new(Subject::Agent { desk: "a/b".into() }),
            IssueRequest::new(Subject::Gateway {
                name: "x".repeat(65),
                ips: vec![],
            }),
            device("LAPTOP 1", TerminalClass::Home, None),
            device("LAPTOP-1", TerminalClass::Home, Some("a@b")),
        ];
        for req in bad {
            let err = ca.issue(&req).unwrap_err();
            assert!(matches!(err, PkiError::InvalidId { .. }), "{err:?}");
        }
        assert!(ca.records().is_empty());
    }

    #[test]
    fn revoke_reasons_parse() {
        for r in RevokeReason::ALL {
            assert_eq!(r.to_string().parse::<RevokeReason>().unwrap(), r);
        }
        assert_eq!(
            "Stolen".parse::<RevokeReason>().unwrap(),
            RevokeReason::KeyCompromise
        );
        let err = "broken".parse::<RevokeReason>().unwrap_err();
        let msg = err.to_string();
        for name in ["unspecified", "key-compromise", "lost", "superseded"] {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn device_certificate_without_class_is_not_ours() {
        // Built by hand with rcgen, the way someone else's CA might.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "urn:kakehashi:device:LAPTOP-9".try_into().unwrap(),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).unwrap();
        let err = identity_from_der(cert.der()).unwrap_err();
        assert!(matches!(err, PkiError::NotOurCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("terminal class"), "{err}");

        // A plain certificate with no Kakehashi identity at all.
        let cert = CertificateParams::new(vec!["example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(PkiError::NotOurCertificate { .. })
        ));

        // The CA certificate is not an end-entity identity.
        let (_tmp, ca) = new_ca();
        assert!(matches!(
            identity_from_der(&ca_der(&ca)),
            Err(PkiError::NotOurCertificate { .. })
        ));
    }

    #[test]
    fn placeholder_oid_has_the_real_oid_length() {
        assert_eq!(
            class_placeholder_tlv().len(),
            terminal_class_oid_tlv().len()
        );
    }

    #[test]
    fn ticket_key_round_trip() {
        let (_tmp, ca) = new_ca();
        let pair = load_ticket_signing_key(&ca.ticket_key_path()).unwrap();
        let public = load_ticket_public_key(&ca.ticket_public_path()).unwrap();
        assert_eq!(pair.public_key().as_ref(), public);
        let sig = pair.sign(b"session ticket");
        UnparsedPublicKey::new(&ED25519, public)
            .verify(b"session ticket", sig.as_ref())
            .unwrap();
    }

    fn roots(ca: &CaDir) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(read_cert_pem(&ca.ca_cert_path()).unwrap())
            .unwrap();
        Arc::new(roots)
    }

    #[test]
    fn webpki_accepts_our_chain_and_honours_the_crl() {
        use rustls::client::danger::ServerCertVerifier as _;

        let (_tmp, mut ca) = new_ca();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let dev = ca
            .issue(&device("LAPTOP-1", TerminalClass::Home, None))
            .unwrap();
        let dev_der = read_cert_pem(&dev.cert_path).unwrap();
        let gw = ca
            .issue(&IssueRequest::new(Subject::Gateway {
                name: "gw.example".into(),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            }))
            .unwrap();
        let gw_der = read_cert_pem(&gw.cert_path).unwrap();

        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&ca),
            provider.clone(),
        )
        .build()
        .unwrap();
        for name in ["gw.example", "127.0.0.1"] {
            server
                .verify_server_cert(
                    &gw_der,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap();
        }
        assert!(server
            .verify_server_cert(
                &gw_der,
                &[],
                &ServerName::try_from("other.example").unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_err());

        let client_verifier = |ca: &CaDir| {
            let crl = CertificateRevocationListDer::from_pem_file(ca.crl_path()).unwrap();
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider.clone())
                .with_crls(vec![crl])
                .build()
                .unwrap()
        };
        client_verifier(&ca)
            .verify_client_cert(&dev_der, &[], UnixTime::now())
            .unwrap();

        ca.revoke(&dev.serial, RevokeReason::KeyCompromise).unwrap();
        ca.write_crl().unwrap();
        let err = client_verifier(&ca)
            .verify_client_cert(&dev_der, &[], UnixTime::now())
            .unwrap_err();
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    }
}
