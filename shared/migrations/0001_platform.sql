-- Tables every service keeps in its own schema.

-- Sessions this service has learned are revoked (logout, set-role, revoke-token, ban).
CREATE TABLE revoked_sessions (
    session_id uuid PRIMARY KEY,
    user_id    uuid,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

-- Accounts this service has learned are banned. There is no unban: events only take away.
CREATE TABLE banned_accounts (
    user_id   uuid PRIMARY KEY,
    banned_at timestamptz NOT NULL DEFAULT now()
);

-- Commands already executed, with their reply, so a repeated message_id executes once.
-- Kept until the caller's token expires: after that a repeat is refused anyway.
CREATE TABLE processed_commands (
    subject    uuid        NOT NULL,
    message_id text        NOT NULL,
    command    text        NOT NULL,
    reply      jsonb,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, message_id)
);
CREATE INDEX processed_commands_expires_at ON processed_commands (expires_at);

-- Events written in the same transaction as their change, relayed to the broker afterwards.
CREATE TABLE outbox (
    position    bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    routing_key text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Events already applied, so a redelivered event changes nothing.
CREATE TABLE seen_events (
    event_id uuid PRIMARY KEY,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
