-- Kakehashi store schema, SQLite flavour (see the crate docs).
-- Every timestamp is unix seconds; booleans are 0/1 integers.

CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    department  TEXT NOT NULL,
    roles       TEXT NOT NULL,          -- sorted, comma-separated: chief,officer,operator,staff
    disabled    INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL
);
CREATE INDEX users_department ON users (department);

CREATE TABLE webauthn_credentials (
    cred_id    BLOB PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    passkey    TEXT NOT NULL,           -- opaque JSON from webauthn-rs
    counter    INTEGER NOT NULL,
    attested   INTEGER NOT NULL,
    created    INTEGER NOT NULL,
    last_used  INTEGER
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY NOT NULL,
    class        TEXT NOT NULL CHECK (class IN ('home', 'mobile', 'satellite')),
    status       TEXT NOT NULL CHECK (status IN ('active', 'blocked', 'lost', 'revoked')),
    loaned_to    TEXT REFERENCES users (id),
    cert_serial  TEXT,
    created      INTEGER NOT NULL
);
CREATE INDEX devices_loaned_to ON devices (loaned_to);

CREATE TABLE desks (
    id          TEXT PRIMARY KEY NOT NULL,
    department  TEXT NOT NULL,
    level       INTEGER NOT NULL CHECK (level BETWEEN 1 AND 3),
    segment     TEXT NOT NULL CHECK (segment IN ('lgwan', 'internet', 'mynumber')),
    created     INTEGER NOT NULL
);

CREATE TABLE desk_owners (
    desk_id  TEXT NOT NULL REFERENCES desks (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (desk_id, user_id)
);
CREATE INDEX desk_owners_user ON desk_owners (user_id);

CREATE TABLE enrollment_codes (
    code_hash   BLOB PRIMARY KEY NOT NULL,   -- SHA-256 of the code; the code itself is never stored
    user_id     TEXT NOT NULL REFERENCES users (id),
    created     INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

CREATE TABLE login_tokens (
    token_hash   BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the token
    user_id      TEXT NOT NULL REFERENCES users (id),
    device_id    TEXT NOT NULL REFERENCES devices (id),
    cert_serial  TEXT NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX login_tokens_user ON login_tokens (user_id);
CREATE INDEX login_tokens_device ON login_tokens (device_id);

CREATE TABLE login_codes (
    code_hash       BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the one-time code
    user_id         TEXT NOT NULL REFERENCES users (id),
    pkce_challenge  TEXT NOT NULL,              -- base64url(SHA-256(verifier)), RFC 7636 S256
    created         INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    used_at         INTEGER
);

CREATE TABLE lockouts (
    counter_key   TEXT PRIMARY KEY NOT NULL,    -- e.g. user:ID, source:IP, enroll:IP
    failures      INTEGER NOT NULL,
    window_start  INTEGER NOT NULL,
    locked_until  INTEGER
);

CREATE TABLE telework_plans (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id),
    day           TEXT NOT NULL,                -- YYYY-MM-DD, local (Asia/Tokyo) date
    start_min     INTEGER NOT NULL,             -- minutes after local midnight
    end_min       INTEGER NOT NULL,
    place         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('submitted', 'approved', 'rejected')),
    submitted_at  INTEGER NOT NULL,
    decided_by    TEXT,
    decided_at    INTEGER
);
CREATE INDEX telework_plans_user_day ON telework_plans (user_id, day);

CREATE TABLE bcp_declarations (
    id           TEXT PRIMARY KEY NOT NULL,
    scope        TEXT NOT NULL,                 -- '*' for all, else a department
    reason       TEXT NOT NULL,
    relax        TEXT NOT NULL,                 -- JSON text, owned by the policy crate
    starts_at    INTEGER NOT NULL,
    ends_at      INTEGER NOT NULL,
    ended_at     INTEGER,
    declared_by  TEXT NOT NULL,
    ended_by     TEXT
);

CREATE TABLE policies (
    version  INTEGER PRIMARY KEY NOT NULL,
    body     TEXT NOT NULL,                     -- TOML
    author   TEXT NOT NULL,
    created  INTEGER NOT NULL
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    desk_id     TEXT NOT NULL,
    class       TEXT NOT NULL,
    level       INTEGER NOT NULL,
    transport   TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    end_reason  TEXT,
    bytes_up    INTEGER NOT NULL DEFAULT 0,
    bytes_down  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_at);
CREATE INDEX sessions_ended ON sessions (ended_at);

CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL,                   -- JSON text, hashed byte for byte
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE INDEX audit_at ON audit (at);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

-- The chain head: the last record's seq and hash (0 and 32 zero bytes when empty).
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
