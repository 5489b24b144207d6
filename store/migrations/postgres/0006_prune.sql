-- Expired one-time codes and login tokens are deleted (issue 19 item 4:
-- they grew the database ~1.24 MB per 1,000 logins, forever). Indexed by
-- expiry so the hourly prune reads only what it deletes.
CREATE INDEX login_codes_expires ON login_codes (expires_at);
CREATE INDEX login_tokens_expires ON login_tokens (expires_at);
CREATE INDEX enrollment_codes_expires ON enrollment_codes (expires_at);
