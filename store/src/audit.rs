//! The hash-chained, append-only audit log (encoding in the crate docs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::db::Store;
use crate::error::{Error, Result};
use crate::types::{validate_text, Hash256};

pub(crate) const HEAD_SQLITE: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
pub(crate) const HEAD_POSTGRES: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
pub(crate) const INSERT_SQL: &str = "INSERT INTO audit \
     (seq, at, actor, action, subject, reason, detail, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// Wakes the change feeds of every gateway on the database (payload: the
/// new record's sequence only; followers read the records themselves).
pub(crate) const NOTIFY_POSTGRES: &str = "SELECT pg_notify('kakehashi_audit', $1)";
pub(crate) const UPDATE_HEAD_SQL: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
/// A record waiting for the sealer (see [`Store::seal_later`]).
pub(crate) const INSERT_PENDING_SQL: &str = "INSERT INTO audit_pending \
     (at, actor, action, subject, reason, detail) VALUES ($1, $2, $3, $4, $5, $6)";
/// The sealer's batch, as one statement (PostgreSQL arrays).
const INSERT_MANY_POSTGRES: &str = "INSERT INTO audit \
     (seq, at, actor, action, subject, reason, detail, prev_hash, hash) \
     SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
     $6::TEXT[], $7::TEXT[], $8::BYTEA[], $9::BYTEA[])";
/// The advisory lock the sealing gateway holds for one batch (any 64-bit
/// constant of ours: "kakehash" in ASCII).
const SEALER_LOCK: i64 = 0x6b61_6b65_6861_7368;
/// Records sealed in one transaction at most.
const SEAL_BATCH: i64 = 2000;

/// Domain-separation tag at the start of every hashed encoding.
const TAG: &[u8] = b"kakehashi-audit-v1";
/// The largest `detail` JSON text accepted.
const MAX_DETAIL: usize = 64 * 1024;

/// What happened, by whom, to what and why: the audit record a change is
/// logged with (see [`Store::append_audit`] and every mutating method).
///
/// `at` and `actor` are also the time and author stamped on the change.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// When (unix seconds).
    pub at: i64,
    /// Who: a user id, `system`, `cli:root`, `gateway:NAME` … (1..=256 bytes).
    pub actor: String,
    /// What, as a stable dotted code: `user.add`, `login.failed` … (1..=128 bytes).
    pub action: String,
    /// The object: a user, device, desk, session id … (may be empty).
    pub subject: String,
    /// Why: a reason code or the officer's words (may be empty).
    pub reason: String,
    /// Anything else, as JSON (`null` when absent). Never secrets or tokens.
    pub detail: serde_json::Value,
}

impl Audit {
    /// A record of `action` by `actor` at `at`, with no subject, reason or detail.
    pub fn new(at: i64, actor: impl Into<String>, action: impl Into<String>) -> Self {
        Audit {
            at,
            actor: actor.into(),
            action: action.into(),
            subject: String::new(),
            reason: String::new(),
            detail: serde_json::Value::Null,
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.at < 0 {
            return Err(Error::invalid("audit at", "negative time"));
        }
        validate_text("audit actor", &self.actor, 256, false)?;
        validate_text("audit action", &self.action, 128, false)?;
        validate_text("audit subject", &self.subject, 256, true)?;
        validate_text("audit reason", &self.reason, 1024, true)?;
        if self.detail.to_string().len() > MAX_DETAIL {
            return Err(Error::invalid("audit detail", "longer than 64 KiB"));
        }
        Ok(())
    }
}

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct AuditRecord {
    /// Position in the chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    /// When (unix seconds).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// JSON text, exactly as hashed.
    pub detail: String,
    /// The previous record's hash (zeros for seq 1).
    #[sqlx(try_from = "Vec<u8>")]
    pub prev_hash: Hash256,
    /// SHA-256 of this record's encoding.
    #[sqlx(try_from = "Vec<u8>")]
    pub hash: Hash256,
}

impl AuditRecord {
    /// The canonical byte encoding of this record's fields as if it stood
    /// at position `seq` (see the crate docs).
    pub fn encoding_at(&self, seq: i64) -> Vec<u8> {
        let texts = [
            &self.actor,
            &self.action,
            &self.subject,
            &self.reason,
            &self.detail,
        ];
        let mut e = Vec::with_capacity(
            4 + TAG.len() + 16 + 32 + texts.iter().map(|t| 4 + t.len()).sum::<usize>(),
        );
        e.extend_from_slice(&len_u32(TAG.len()).to_be_bytes());
        e.extend_from_slice(TAG);
        e.extend_from_slice(&seq.to_be_bytes());
        e.extend_from_slice(&self.at.to_be_bytes());
        for t in texts {
            // Fields are bounded far below 4 GiB by Audit::validate.
            e.extend_from_slice(&len_u32(t.len()).to_be_bytes());
            e.extend_from_slice(t.as_bytes());
        }
        e.extend_from_slice(&self.prev_hash.0);
        e
    }

    /// The hash this record should carry at its own position.
    pub fn compute_hash(&self) -> Hash256 {
        Hash256::digest(self.encoding_at(self.seq))
    }

    /// Whether the stored hash matches the content.
    pub fn is_sealed(&self) -> bool {
        self.compute_hash() == self.hash
    }

    /// The detail parsed as JSON.
    pub fn detail_json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.detail)
            .map_err(|e| Error::corrupt("audit detail", e.to_string()))
    }
}

/// Builds the record for `audit` at position `seq` after `prev_hash`.
pub(crate) fn seal(audit: &Audit, seq: i64, prev_hash: Hash256) -> AuditRecord {
    let mut r = pending(audit);
    r.seq = seq;
    r.prev_hash = prev_hash;
    r.hash = r.compute_hash();
    r
}

/// The record of `audit` while it waits for the sealer: `seq` 0, no hashes.
pub(crate) fn pending(audit: &Audit) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: audit.at,
        actor: audit.actor.clone(),
        action: audit.action.clone(),
        subject: audit.subject.clone(),
        reason: audit.reason.clone(),
        detail: audit.detail.to_string(),
        prev_hash: Hash256::ZERO,
        hash: Hash256::ZERO,
    }
}

/// A row of `audit_pending`.
#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    reason: String,
    detail: String,
}

/// How the chain was found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The record's content does not match its hash.
    Edited,
    /// Records are missing (a gap in `seq`, or fewer records than the head says).
    Deleted,
    /// The record is intact but belongs at another position.
    Reordered,
    /// The record's `prev_hash` is not the previous record's hash.
    BadLink,
}

impl BreakKind {
    /// `edited`, `deleted`, `reordered` or `bad link`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Reordered => "reordered",
            BreakKind::BadLink => "bad link",
        }
    }
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first place the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenLink {
    /// The record found broken; for [`BreakKind::Deleted`], the first missing seq.
    pub seq: i64,
    /// What is wrong there.
    pub kind: BreakKind,
}

/// The result of [`Store::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records verified before the first break (all of them when intact).
    pub records: u64,
    /// The chain head's seq when verification started.
    pub head_seq: i64,
    /// The first break, if any.
    pub first_broken: Option<BrokenLink>,
}

impl VerifyReport {
    /// True when the whole chain verified.
    pub fn is_intact(&self) -> bool {
        self.first_broken.is_none()
    }
}

const VERIFY_PAGE: i64 = 1000;

impl Store {
    /// Appends a pure event (login, denial, failure…) to the audit log.
    /// With [`Store::seal_later`] on PostgreSQL the record waits for the
    /// sealer and comes back with `seq` 0.
    pub async fn append_audit(&self, audit: Audit) -> Result<AuditRecord> {
        let ((), record) = write_tx!(self, audit, concurrent, |tx| {});
        Ok(record)
    }

    /// On PostgreSQL, let the writes of logins and sessions leave their
    /// audit records for [`Store::seal_pending`] rather than each take the
    /// chain head until it commits (which runs the whole cluster's logins
    /// one at a time, one disk flush each). Whoever opens a store this way
    /// must call `seal_pending` often (the gateway: every 100 ms). No effect
    /// on SQLite, where one writer at a time is the file's own rule.
    pub fn seal_later(mut self, on: bool) -> Self {
        self.seal_later = on;
        self
    }

    /// Moves the records waiting in `audit_pending` into the chain, oldest
    /// first, in batches of at most 2,000, under the head lock, and wakes
    /// the change feeds once per batch. Returns how many it sealed; 0 at
    /// once when another gateway is sealing (`pg_try_advisory_xact_lock`)
    /// or nothing waits. Safe to call from every gateway at once.
    pub async fn seal_pending(&self) -> Result<u64> {
        let crate::db::Pool::Postgres(pool) = &self.pool else {
            return Ok(0);
        };
        const ANY: &str = "SELECT EXISTS (SELECT 1 FROM audit_pending)";
        const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";
        const TAKE: &str = "SELECT id, at, actor, action, subject, reason, detail \
             FROM audit_pending ORDER BY id LIMIT $1";
        const DELETE: &str = "DELETE FROM audit_pending WHERE id = ANY($1)";
        let mut sealed = 0u64;
        loop {
            let any: bool = sqlx::query_scalar(ANY).fetch_one(pool).await?;
            if !any {
                return Ok(sealed);
            }
            let mut tx = pool.begin().await?;
            let mine: bool = sqlx::query_scalar(TRY_LOCK)
                .bind(SEALER_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !mine {
                return Ok(sealed);
            }
            let (mut seq, hash): (i64, Vec<u8>) =
                sqlx::query_as(HEAD_POSTGRES).fetch_one(&mut *tx).await?;
            let mut prev = Hash256::try_from(hash)?;
            let rows: Vec<PendingRow> = sqlx::query_as(TAKE)
                .bind(SEAL_BATCH)
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                return Ok(sealed);
            }
            let n = rows.len();
            let mut ids = Vec::with_capacity(n);
            let (mut seqs, mut ats, mut hashes, mut prevs) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut actors, mut actions, mut subjects, mut reasons, mut details) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for row in rows {
                seq += 1;
                let mut r = AuditRecord {
                    seq,
                    at: row.at,
                    actor: row.actor,
                    action: row.action,
                    subject: row.subject,
                    reason: row.reason,
                    detail: row.detail,
                    prev_hash: prev,
                    hash: Hash256::ZERO,
                };
                r.hash = r.compute_hash();
                prev = r.hash;
                ids.push(row.id);
                seqs.push(r.seq);
                ats.push(r.at);
                prevs.push(r.prev_hash.0.to_vec());
                hashes.push(r.hash.0.to_vec());
                actors.push(r.actor);
                actions.push(r.action);
                subjects.push(r.subject);
                reasons.push(r.reason);
                details.push(r.detail);
            }
            // One statement for the batch.
            sqlx::query(INSERT_MANY_POSTGRES)
                .bind(&seqs)
                .bind(&ats)
                .bind(&actors)
                .bind(&actions)
                .bind(&subjects)
                .bind(&reasons)
                .bind(&details)
                .bind(&prevs)
                .bind(&hashes)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE).bind(&ids).execute(&mut *tx).await?;
            sqlx::query(UPDATE_HEAD_SQL)
                .bind(seq)
                .bind(&prev.0[..])
                .execute(&mut *tx)
                .await?;
            sqlx::query(NOTIFY_POSTGRES)
                .bind(seq.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            sealed += u64::try_from(ids.len()).unwrap_or(u64::MAX);
            if i64::try_from(ids.len()).unwrap_or(i64::MAX) < SEAL_BATCH {
                return Ok(sealed);
            }
        }
    }

    /// Records waiting for the sealer, and the time (`at`) of the oldest.
    pub async fn pending_audit(&self) -> Result<(u64, Option<i64>)> {
        const SQL: &str = "SELECT COUNT(*), MIN(at) FROM audit_pending";
        let (n, oldest): (i64, Option<i64>) =
            read!(self, |p| sqlx::query_as(SQL).fetch_one(p).await?);
        Ok((u64::try_from(n).unwrap_or(0), oldest))
    }

    /// The chain head: the last record's seq and hash (`0` and zeros when empty).
    pub async fn audit_head(&self) -> Result<(i64, Hash256)> {
        let (seq, hash): (i64, Vec<u8>) =
            read!(self, |p| sqlx::query_as(HEAD_SQLITE).fetch_one(p).await?);
        Ok((seq, Hash256::try_from(hash)?))
    }

    /// Records with `since <= at < until`, in chain order (for export).
    pub async fn audit_between(&self, since: i64, until: i64) -> Result<Vec<AuditRecord>> {
        const SQL: &str =
            "SELECT seq, at, actor, action, subject, reason, detail, prev_hash, hash \
             FROM audit WHERE at >= $1 AND at < $2 ORDER BY seq";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(since)
            .bind(until)
            .fetch_all(p)
            .await?))
    }

    /// Up to `limit` records after `after_seq`, in chain order (for paging
    /// through a large log or forwarding it).
    pub async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.audit_range(after_seq, i64::MAX, i64::from(limit))
            .await
    }

    async fn audit_range(&self, after: i64, upto: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        const SQL: &str =
            "SELECT seq, at, actor, action, subject, reason, detail, prev_hash, hash \
             FROM audit WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// Walks the whole chain and reports the first break, if any.
    pub async fn verify_audit(&self) -> Result<VerifyReport> {
        Ok(self.verify_audit_at(&BTreeSet::new()).await?.0)
    }

    /// [`Store::verify_audit`], also returning the hash of each record in
    /// `seqs` that verified (those before the first break), to check
    /// checkpoints against.
    pub async fn verify_audit_at(
        &self,
        seqs: &BTreeSet<i64>,
    ) -> Result<(VerifyReport, BTreeMap<i64, Hash256>)> {
        let mut hashes = BTreeMap::new();
        let (head_seq, head_hash) = self.audit_head().await?;
        let mut prev = (0i64, Hash256::ZERO);
        let mut records = 0u64;
        let report = |records, broken| VerifyReport {
            records,
            head_seq,
            first_broken: broken,
        };
        loop {
            let page = self.audit_range(prev.0, head_seq, VERIFY_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for r in page {
                if let Some(b) = self.check_link(&r, prev, (head_seq, head_hash)).await? {
                    return Ok((report(records, Some(b)), hashes));
                }
                if seqs.contains(&r.seq) {
                    hashes.insert(r.seq, r.hash);
                }
                records += 1;
                prev = (r.seq, r.hash);
            }
        }
        let tail = if prev.0 < head_seq {
            Some(BrokenLink {
                seq: prev.0 + 1,
                kind: BreakKind::Deleted,
            })
        } else if prev.1 != head_hash {
            Some(BrokenLink {
                seq: prev.0,
                kind: BreakKind::Edited,
            })
        } else {
            None
        };
        if tail.is_some() {
            // The last records are not what the head says: none of them anchors.
            hashes.retain(|&seq, _| seq < prev.0);
        }
        Ok((report(records, tail), hashes))
    }

    async fn check_link(
        &self,
        r: &AuditRecord,
        prev: (i64, Hash256),
        head: (i64, Hash256),
    ) -> Result<Option<BrokenLink>> {
        let broken = |seq, kind| Ok(Some(BrokenLink { seq, kind }));
        if r.seq != prev.0 + 1 {
            return broken(prev.0 + 1, BreakKind::Deleted);
        }
        if !r.is_sealed() {
            let kind = if self.belongs_elsewhere(r, head).await? {
                BreakKind::Reordered
            } else {
                BreakKind::Edited
            };
            return broken(r.seq, kind);
        }
        if r.prev_hash != prev.1 {
            return broken(r.seq, BreakKind::BadLink);
        }
        Ok(None)
    }

    /// Whether `r` (whose hash is wrong for its position) is an intact
    /// record moved from another position: its original position is found
    /// from its chain neighbours, and its hash must be right there.
    async fn belongs_elsewhere(&self, r: &AuditRecord, head: (i64, Hash256)) -> Result<bool> {
        const BY_PREV: &str = "SELECT seq FROM audit WHERE prev_hash = $1";
        const BY_HASH: &str = "SELECT seq FROM audit WHERE hash = $1";
        let mut candidates: Vec<i64> = Vec::new();
        let successors: Vec<i64> = read!(self, |p| sqlx::query_scalar(BY_PREV)
            .bind(&r.hash.0[..])
            .fetch_all(p)
            .await?);
        candidates.extend(successors.iter().map(|q| q - 1));
        if r.prev_hash == Hash256::ZERO {
            candidates.push(1);
        } else {
            let preds: Vec<i64> = read!(self, |p| sqlx::query_scalar(BY_HASH)
                .bind(&r.prev_hash.0[..])
                .fetch_all(p)
                .await?);
            candidates.extend(preds.iter().map(|p| p + 1));
        }
        if head.1 == r.hash {
            candidates.push(head.0);
        }
        Ok(candidates
            .into_iter()
            .filter(|&c| c != r.seq)
            .any(|c| Hash256::digest(r.encoding_at(c)) == r.hash))
    }
}

/// A length in the hashed encoding (4 bytes, big-endian). Every field is
/// bounded far below 4 GiB (`Audit::validate`); a longer one would be a bug,
/// and saturating keeps the encoding unambiguous rather than wrapping.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Audit {
        Audit::new(1_700_000_000, "officer1", "user.add")
            .subject("u1")
            .reason("新規採用")
            .detail(serde_json::json!({"dept": "総務課"}))
    }

    #[test]
    fn encoding_is_length_prefixed() {
        let r = seal(&sample(), 7, Hash256::ZERO);
        let e = r.encoding_at(7);
        assert_eq!(&e[..4], &18u32.to_be_bytes());
        assert_eq!(&e[4..22], b"kakehashi-audit-v1");
        assert_eq!(&e[22..30], &7i64.to_be_bytes());
        assert_eq!(&e[30..38], &1_700_000_000i64.to_be_bytes());
        assert_eq!(&e[38..42], &8u32.to_be_bytes());
        assert_eq!(&e[42..50], b"officer1");
        assert_eq!(&e[e.len() - 32..], &[0u8; 32]);
        assert_eq!(r.hash, Hash256::digest(&e));
        assert!(r.is_sealed());
    }

    #[test]
    fn field_boundaries_do_not_collide() {
        // "ab" + "c" and "a" + "bc" must hash differently.
        let a = seal(&Audit::new(1, "ab", "c"), 1, Hash256::ZERO);
        let b = seal(&Audit::new(1, "a", "bc"), 1, Hash256::ZERO);
        assert_ne!(a.hash, b.hash);
        let c = seal(&Audit::new(1, "a", "b").subject(""), 1, Hash256::ZERO);
        let d = seal(&Audit::new(1, "a", "b").reason(""), 1, Hash256::ZERO);
        assert_eq!(c.hash, d.hash, "both empty: same record");
    }

    #[test]
    fn every_field_is_covered() {
        let base = seal(&sample(), 3, Hash256::ZERO);
        let mut variants = vec![];
        let mut v = base.clone();
        v.at += 1;
        variants.push(v);
        let mut v = base.clone();
        v.actor.push('x');
        variants.push(v);
        let mut v = base.clone();
        v.action.push('x');
        variants.push(v);
        let mut v = base.clone();
        v.subject.push('x');
        variants.push(v);
        let mut v = base.clone();
        v.reason.push('x');
        variants.push(v);
        let mut v = base.clone();
        v.detail = "{}".into();
        variants.push(v);
        let mut v = base.clone();
        v.prev_hash = Hash256([1; 32]);
        variants.push(v);
        for v in variants {
            assert!(!v.is_sealed(), "{v:?}");
        }
        assert_ne!(Hash256::digest(base.encoding_at(4)), base.hash);
    }

    #[test]
    fn validation() {
        assert!(sample().validate().is_ok());
        assert!(Audit::new(-1, "a", "b").validate().is_err());
        assert!(Audit::new(1, "", "b").validate().is_err());
        assert!(Audit::new(1, "a", "").validate().is_err());
        assert!(Audit::new(1, "a", "b").subject("x\ny").validate().is_err());
        let big = serde_json::Value::String("x".repeat(MAX_DETAIL));
        assert!(Audit::new(1, "a", "b").detail(big).validate().is_err());
    }
}
