-- Kakehashi store schema, PostgreSQL flavour (see the crate docs).
-- Same tables and columns as migrations/sqlite; every timestamp is unix seconds.

CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    department  TEXT NOT NULL,
    roles       TEXT NOT NULL,          -- sorted, comma-separated: chief,officer,operator,staff
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created     BIGINT NOT NULL
);
CREATE INDEX users_department ON users (department);

CREATE TABLE webauthn_credentials (
    cred_id    BYTEA PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id),
    passkey    TEXT NOT NULL,           -- opaque JSON from webauthn-rs
    counter    BIGINT NOT NULL,
    attested   BOOLEAN NOT NULL,
    created    BIGINT NOT NULL,
    last_used  BIGINT
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY NOT NULL,
    class        TEXT NOT NULL CHECK (class IN ('home', 'mobile', 'satellite')),
    status       TEXT NOT NULL CHECK (status IN ('active', 'blocked', 'lost', 'revoked')),
    loaned_to    TEXT REFERENCES users (id),
    cert_serial  TEXT,
    created      BIGINT NOT NULL
);
CREATE INDEX devices_loaned_to ON devices (loaned_to);

CREATE TABLE desks (
    id          TEXT PRIMARY KEY NOT NULL,
    department  TEXT NOT NULL,
    level       BIGINT NOT NULL CHECK (level BETWEEN 1 AND 3),
    segment     TEXT NOT NULL CHECK (segment IN ('lgwan', 'internet', 'mynumber')),
    created     BIGINT NOT NULL
);

CREATE TABLE desk_owners (
    desk_id  TEXT NOT NULL REFERENCES desks (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (desk_id, user_id)
);
CREATE INDEX desk_owners_user ON desk_owners (user_id);

CREATE TABLE enrollment_codes (
    code_hash   BYTEA PRIMARY KEY NOT NULL,   -- SHA-256 of the code; the code itself is never stored
    user_id     TEXT NOT NULL REFERENCES users (id),
    created     BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE login_tokens (
    token_hash   BYTEA PRIMARY KEY NOT NULL,  -- SHA-256 of the token
    user_id      TEXT NOT NULL REFERENCES users (id),
    device_id    TEXT NOT NULL REFERENCES devices (id),
    cert_serial  TEXT NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX login_tokens_user ON login_tokens (user_id);
CREATE INDEX login_tokens_device ON login_tokens (device_id);

CREATE TABLE login_codes (
    code_hash       BYTEA PRIMARY KEY NOT NULL,  -- SHA-256 of the one-time code
    user_id         TEXT NOT NULL REFERENCES users (id),
    pkce_challenge  TEXT NOT NULL,              -- base64url(SHA-256(verifier)), RFC 7636 S256
    created         BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);

CREATE TABLE lockouts (
    counter_key   TEXT PRIMARY KEY NOT NULL,    -- e.g. user:ID, source:IP, enroll:IP
    failures      BIGINT NOT NULL,
    window_start  BIGINT NOT NULL,
    locked_until  BIGINT
);

CREATE TABLE telework_plans (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id),
    day           TEXT NOT NULL,                -- YYYY-MM-DD, local (Asia/Tokyo) date
    start_min     BIGINT NOT NULL,             -- minutes after local midnight
    end_min       BIGINT NOT NULL,
    place         TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('submitted', 'approved', 'rejected')),
    submitted_at  BIGINT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT
);
CREATE INDEX telework_plans_user_day ON telework_plans (user_id, day);

CREATE TABLE bcp_declarations (
    id           TEXT PRIMARY KEY NOT NULL,
    scope        TEXT NOT NULL,                 -- '*' for all, else a department
    reason       TEXT NOT NULL,
    relax        TEXT NOT NULL,                 -- JSON text, owned by the policy crate
    starts_at    BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL,
    ended_at     BIGINT,
    declared_by  TEXT NOT NULL,
    ended_by     TEXT
);

CREATE TABLE policies (
    version  BIGINT PRIMARY KEY NOT NULL,
    body     TEXT NOT NULL,                     -- TOML
    author   TEXT NOT NULL,
    created  BIGINT NOT NULL
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    desk_id     TEXT NOT NULL,
    class       TEXT NOT NULL,
    level       BIGINT NOT NULL,
    transport   TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    end_reason  TEXT,
    bytes_up    BIGINT NOT NULL DEFAULT 0,
    bytes_down  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_at);
CREATE INDEX sessions_ended ON sessions (ended_at);

CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY NOT NULL,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL,                   -- JSON text, hashed byte for byte
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL
);
CREATE INDEX audit_at ON audit (at);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END;
$$;

CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The chain head: the last record's seq and hash (0 and 32 zero bytes when empty).
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
