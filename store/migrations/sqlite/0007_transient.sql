-- Short-lived one-time state shared by every gateway (issue 18 item 4):
-- portal WebAuthn ceremonies between their start and finish, portal
-- sessions, and used level-3 step-ups. Kept here rather than in one
-- process, so a login started on one gateway finishes on another. Keys are
-- SHA-256 of the random ids (a reader of the database cannot take over a
-- portal session); `value` is the state as JSON. Not audited: the events
-- (login, logout, refusals) are, the state is not. Expired rows are
-- deleted when a kind is over its cap and by the hourly prune.
CREATE TABLE transient_state (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key_hash BLOB NOT NULL,
    user_key TEXT,
    source_key TEXT,
    expires_at INTEGER NOT NULL,
    value TEXT NOT NULL,
    UNIQUE (kind, key_hash)
);
CREATE INDEX transient_state_user ON transient_state (kind, user_key, seq);
CREATE INDEX transient_state_source ON transient_state (kind, source_key, seq);
CREATE INDEX transient_state_expires ON transient_state (expires_at);
