-- Accounts (people and service accounts), their sessions, login failures and signing keys.

CREATE TABLE accounts (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('user', 'service')),
    email         text UNIQUE,
    service_name  text UNIQUE,
    display_name  text NOT NULL,
    password_hash text,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'user' AND email IS NOT NULL AND password_hash IS NOT NULL)
        OR (kind = 'service' AND service_name IS NOT NULL))
);

CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    token_id    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX sessions_account_active ON sessions (account_id) WHERE revoked_at IS NULL;

-- Failed logins, by account key (the email tried) and by client address, for the rate limit.
CREATE TABLE login_failures (
    id          bigserial PRIMARY KEY,
    account_key text NOT NULL,
    address     text,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_account ON login_failures (account_key, failed_at);
CREATE INDEX login_failures_address ON login_failures (address, failed_at);

-- The development signing key, kept when no AUTH_SIGNING_KEY_FILE is configured.
CREATE TABLE signing_keys (
    name        text PRIMARY KEY,
    private_pem text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
