-- Refresh tokens: opaque random strings of which only the SHA-256 is kept, each good for one use.
--
-- A token is valid while it is unused (or used less than REFRESH_REUSE_GRACE_SECONDS ago), before
-- its `expires_at` (REFRESH_TOKEN_TTL_SECONDS after it was issued, never past the session's
-- SESSION_MAX_AGE_SECONDS) and while its session is open: logout, ban, set-role and revoke-token
-- close the session row, and with it every refresh token of the session, without touching this
-- table. `access_token_id` is the `jti` of the access token issued with it, so that revoke-token
-- finds a session by the jti of any of its access tokens, not only its first.
CREATE TABLE refresh_tokens (
    token_hash      bytea PRIMARY KEY,
    session_id      uuid NOT NULL REFERENCES sessions (id),
    account_id      uuid NOT NULL REFERENCES accounts (id),
    access_token_id text NOT NULL,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    replaced_by     bytea
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_access_token ON refresh_tokens (access_token_id);

-- Until when the session can still be refreshed (its newest refresh token's expiry). A session
-- counts as active while its access token or its refresh token can still be used, so that a ban
-- or set-role closes a session whose access token has expired but which could still be refreshed.
ALTER TABLE sessions ADD COLUMN refresh_until timestamptz;
