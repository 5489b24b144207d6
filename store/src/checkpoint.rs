//! Signed checkpoints of the audit chain head, and the check of the chain
//! against them.
//!
//! The hash chain alone proves only that the records are consistent with
//! each other: someone who can write to the database can drop the guard
//! triggers, edit a record and recompute every later hash. A checkpoint is
//! the chain head — `seq` and `hash` — signed with an Ed25519 key that is
//! *not* in the database. A database writer can still rewrite and re-chain,
//! but cannot sign the new hash at an old `seq`, so the rewritten chain no
//! longer matches the checkpoint; and cutting records off the end leaves a
//! checkpoint beyond the new head.
//!
//! The signed bytes (`u32be`/`i64be` big-endian, `‖` concatenation):
//!
//! ```text
//! C = u32be(29) ‖ "kakehashi-audit-checkpoint-v1"
//!   ‖ i64be(seq) ‖ hash (32 raw bytes) ‖ i64be(at)
//!   ‖ u32be(len(gateway)) ‖ gateway
//! ```
//!
//! A checkpoint is only as good as the public key it is checked with: it
//! must come from outside the database (the key file, or a copy kept off
//! the host). Checkpoints stored in the audit table (action
//! [`CHECKPOINT_ACTION`]) are checked with that same outside key; a
//! checkpoint signed by an unknown key anchors nothing.

use std::collections::{BTreeMap, BTreeSet};

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use crate::audit::VerifyReport;
use crate::db::Store;
use crate::error::{Error, Result};
use crate::types::Hash256;

/// The audit action of a checkpoint stored in the chain itself.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// Domain-separation tag at the start of the signed bytes.
const TAG: &[u8] = b"kakehashi-audit-checkpoint-v1";

/// The chain head at `seq`, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: i64,
    /// That record's hash.
    pub hash: Hash256,
    /// When it was signed (unix seconds).
    pub at: i64,
    /// The signing gateway's name.
    pub gateway: String,
    /// [`key_id`] of the signing key (which key to check it with; not trusted).
    pub key_id: String,
    /// Ed25519 signature over the bytes in the module docs.
    pub signature: Vec<u8>,
}

/// The JSON form: `{"v":1,"seq":…,"hash":"hex","at":…,"gateway":"…","key_id":"hex","sig":"hex"}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    seq: i64,
    hash: String,
    at: i64,
    gateway: String,
    key_id: String,
    sig: String,
}

/// A short name for an Ed25519 public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Hash256::digest(public_key).0[..8])
}

impl Checkpoint {
    /// Signs the head `(seq, hash)` at `at` for `gateway`.
    pub fn sign(seq: i64, hash: Hash256, at: i64, gateway: &str, key: &Ed25519KeyPair) -> Self {
        let mut c = Checkpoint {
            seq,
            hash,
            at,
            gateway: gateway.to_owned(),
            key_id: key_id(key.public_key().as_ref()),
            signature: Vec::new(),
        };
        c.signature = key.sign(&c.signed_bytes()).as_ref().to_vec();
        c
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + TAG.len() + 8 + 32 + 8 + 4 + self.gateway.len());
        b.extend_from_slice(&crate::audit::len_u32(TAG.len()).to_be_bytes());
        b.extend_from_slice(TAG);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.hash.0);
        b.extend_from_slice(&self.at.to_be_bytes());
        // Gateway names are short configuration strings.
        b.extend_from_slice(&crate::audit::len_u32(self.gateway.len()).to_be_bytes());
        b.extend_from_slice(self.gateway.as_bytes());
        b
    }

    /// Whether the signature is valid under `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// The JSON object (also the `detail` of a checkpoint record).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Wire {
            v: 1,
            seq: self.seq,
            hash: self.hash.to_hex(),
            at: self.at,
            gateway: self.gateway.clone(),
            key_id: self.key_id.clone(),
            sig: hex::encode(&self.signature),
        })
        .expect("plain strings and integers serialise")
    }

    /// Parses the JSON object written by [`Checkpoint::to_json`].
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let bad = |e: String| Error::corrupt("audit checkpoint", e);
        let w: Wire = serde::Deserialize::deserialize(v).map_err(|e| bad(e.to_string()))?;
        if w.v != 1 {
            return Err(bad(format!("unknown version {}", w.v)));
        }
        Ok(Checkpoint {
            seq: w.seq,
            hash: Hash256::from_hex(&w.hash)?,
            at: w.at,
            gateway: w.gateway,
            key_id: w.key_id,
            signature: hex::decode(&w.sig).map_err(|e| bad(format!("sig: {e}")))?,
        })
    }
}

/// Where a checkpoint was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSource {
    /// Outside the database (the checkpoint file, a syslog copy): line number.
    External(u64),
    /// The audit table: the seq of the checkpoint record.
    Record(i64),
}

impl std::fmt::Display for CheckpointSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointSource::External(line) => write!(f, "checkpoint file line {line}"),
            CheckpointSource::Record(seq) => write!(f, "audit record {seq}"),
        }
    }
}

/// Why the chain does not stand against its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnchorProblem {
    /// A checkpoint claims a trusted key but its signature does not verify: forged or altered.
    BadSignature {
        /// The seq it claims to cover.
        seq: i64,
        /// Where it was found.
        source: CheckpointSource,
    },
    /// The recomputed chain at `seq` is not the signed hash: records
    /// `since..=seq` were rewritten (`since` is one after the last
    /// checkpoint that still matches, or 1).
    Mismatch {
        /// The checkpoint's seq.
        seq: i64,
        /// The first record that may have been rewritten.
        since: i64,
        /// The checkpoint.
        checkpoint: Checkpoint,
    },
    /// A checkpoint covers records the chain no longer has: records
    /// `head_seq + 1 ..= seq` were deleted.
    Missing {
        /// The checkpoint's seq.
        seq: i64,
        /// The chain head.
        head_seq: i64,
    },
}

/// The result of [`Store::verify_audit_anchored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReport {
    /// The chain walk.
    pub chain: VerifyReport,
    /// The highest checkpoint whose signature and hash both hold: records
    /// `1..=seq` are anchored, those after it are not.
    pub anchored: Option<Checkpoint>,
    /// Checkpoints whose signature verified (file and records, duplicates once).
    pub checked: usize,
    /// Checkpoints signed by a key not given, not checked: they anchor nothing.
    pub unknown_key: usize,
    /// The first problem, if any.
    pub problem: Option<AnchorProblem>,
}

impl AnchorReport {
    /// True when the chain is intact and agrees with every checked checkpoint.
    pub fn is_intact(&self) -> bool {
        self.chain.is_intact() && self.problem.is_none()
    }
}

impl Store {
    /// The checkpoints stored in the audit table, with their record's seq.
    /// Records that do not parse are reported as errors.
    pub async fn audit_checkpoints(&self) -> Result<Vec<(i64, Result<Checkpoint>)>> {
        const SQL: &str =
            "SELECT seq, at, actor, action, subject, reason, detail, prev_hash, hash \
             FROM audit WHERE action = $1 ORDER BY seq";
        let recs: Vec<crate::AuditRecord> = read!(self, |p| sqlx::query_as(SQL)
            .bind(CHECKPOINT_ACTION)
            .fetch_all(p)
            .await?);
        Ok(recs
            .into_iter()
            .map(|r| {
                let c = r.detail_json().and_then(|v| Checkpoint::from_json(&v));
                (r.seq, c)
            })
            .collect())
    }

    /// Walks the chain ([`Store::verify_audit`]) and checks it against
    /// `external` checkpoints (from outside the database) and those stored
    /// in the audit table, with the trusted public keys `keys`.
    pub async fn verify_audit_anchored(
        &self,
        external: &[(u64, Checkpoint)],
        keys: &[[u8; 32]],
    ) -> Result<AnchorReport> {
        let by_id: BTreeMap<String, &[u8; 32]> = keys.iter().map(|k| (key_id(k), k)).collect();
        let mut all: Vec<(CheckpointSource, Checkpoint)> = external
            .iter()
            .map(|(line, c)| (CheckpointSource::External(*line), c.clone()))
            .collect();
        // A checkpoint record whose detail does not parse anchors nothing;
        // if it was edited, the chain walk reports it.
        for (seq, c) in self.audit_checkpoints().await? {
            if let Ok(c) = c {
                all.push((CheckpointSource::Record(seq), c));
            }
        }
        let mut trusted: BTreeMap<i64, Vec<Checkpoint>> = BTreeMap::new();
        let mut unknown_key = 0;
        let mut problem = None;
        let mut seen = BTreeSet::new();
        for (source, c) in all {
            if !seen.insert((c.seq, c.hash, c.signature.clone())) {
                continue;
            }
            match by_id.get(&c.key_id) {
                None => unknown_key += 1,
                Some(k) if c.verify(&k[..]) => trusted.entry(c.seq).or_default().push(c),
                Some(_) => {
                    problem = problem.or(Some(AnchorProblem::BadSignature { seq: c.seq, source }));
                }
            }
        }
        let seqs: BTreeSet<i64> = trusted.keys().copied().collect();
        let (chain, hashes) = self.verify_audit_at(&seqs).await?;
        let checked = trusted.values().map(Vec::len).sum();
        let mut anchored = None;
        let mut last_good = 0;
        for (&seq, cs) in &trusted {
            if problem.is_some() {
                break;
            }
            if seq > chain.head_seq {
                problem = Some(AnchorProblem::Missing {
                    seq,
                    head_seq: chain.head_seq,
                });
                break;
            }
            let Some(h) = hashes.get(&seq) else {
                // At or after the first break: the walk reports it.
                break;
            };
            if let Some(c) = cs.iter().find(|c| c.hash != *h) {
                problem = Some(AnchorProblem::Mismatch {
                    seq,
                    since: last_good + 1,
                    checkpoint: c.clone(),
                });
                break;
            }
            last_good = seq;
            anchored = cs.first().cloned();
        }
        Ok(AnchorReport {
            chain,
            anchored,
            checked,
            unknown_key,
            problem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn signs_verifies_and_round_trips() {
        let k = key();
        let c = Checkpoint::sign(42, Hash256([3; 32]), 1_700_000_000, "gw1", &k);
        assert!(c.verify(k.public_key().as_ref()));
        assert!(!c.verify(key().public_key().as_ref()));
        let back = Checkpoint::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
        let mut variants = vec![c.clone(); 4];
        variants[0].seq += 1;
        variants[1].hash = Hash256([4; 32]);
        variants[2].at += 1;
        variants[3].gateway.push('x');
        for v in variants {
            assert!(!v.verify(k.public_key().as_ref()), "{v:?}");
        }
        let e = &c.signed_bytes();
        assert_eq!(&e[..4], &29u32.to_be_bytes());
        assert_eq!(&e[4..33], TAG);
        assert_eq!(key_id(k.public_key().as_ref()), c.key_id);
        assert_eq!(c.key_id.len(), 16);
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let c = Checkpoint::sign(1, Hash256::ZERO, 1, "gw1", &key());
        let mut v = c.to_json();
        v["v"] = 2.into();
        assert!(Checkpoint::from_json(&v).is_err());
        let mut v = c.to_json();
        v["extra"] = 1.into();
        assert!(Checkpoint::from_json(&v).is_err());
    }
}
