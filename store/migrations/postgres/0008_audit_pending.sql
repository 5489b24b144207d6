-- The audit chain off the hot path (issue 18 item 8): with seal_later, the
-- writes of logins and sessions insert their record here, in the same
-- transaction as the change, instead of each taking the chain head until
-- it commits; a sealer (one gateway at a time) moves them into `audit`,
-- chained in `id` order, in batches. Append-only for writers; the sealer
-- deletes what it has sealed in the transaction that seals it.
CREATE TABLE audit_pending (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
