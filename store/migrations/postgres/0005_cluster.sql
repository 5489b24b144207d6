-- Several gateways on one database (issue 18).
--
-- `sessions.gateway`: the member carrying the session. A starting gateway
-- closes only its own open rows; the survivors close a dead member's rows
-- once its membership has expired. NULL: a row written before clustering.
ALTER TABLE sessions ADD COLUMN gateway TEXT;
CREATE INDEX sessions_open_by_gateway ON sessions (gateway) WHERE ended_at IS NULL;

-- One row per gateway (its configured name). Presence only: heartbeats
-- update it in place and never go through the audit log. Times are unix
-- seconds; `db_at` and `expires_at` are the database's clock (one clock for
-- every member), `heartbeat_at` the member's own, so a skewed member clock
-- shows as `heartbeat_at - db_at`.
CREATE TABLE gateway_members (
    id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    laptop_addrs TEXT NOT NULL,
    agent_addrs TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    db_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    sessions BIGINT NOT NULL DEFAULT 0,
    agents BIGINT NOT NULL DEFAULT 0,
    feed_seq BIGINT NOT NULL DEFAULT 0,
    left_at BIGINT
);
