-- Every authorization decision this service made: allowed, denied, or replayed from a stored reply.
CREATE TABLE audit_log (
    id          bigserial   PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    decision    text        NOT NULL CHECK (decision IN ('allowed', 'denied', 'replayed')),
    command     text        NOT NULL,
    caller      text        NOT NULL,
    caller_kind text        NOT NULL CHECK (caller_kind IN ('user', 'service', 'anonymous')),
    resource    text,
    reason      text        NOT NULL,
    message_id  text,
    request_id  text
);
CREATE INDEX audit_log_by_decision ON audit_log (decision, id DESC);
