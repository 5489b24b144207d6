-- The audit records waiting for the sealer (see the PostgreSQL migration of
-- the same number). SQLite has one writer at a time and seals each record
-- in its own transaction, so this table stays empty; it exists so both
-- backends have the same tables.
CREATE TABLE audit_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
