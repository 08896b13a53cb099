-- Registration attempts, by client address (NULL when the publisher gave none), for the
-- registration rate limit: per address and over all addresses, within REGISTER_WINDOW_SECONDS.
-- Each reservation clears expired rows, so the table holds about one window's worth at most.

CREATE TABLE registration_attempts (
    id           bigserial PRIMARY KEY,
    address      text,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registration_attempts_time ON registration_attempts (attempted_at);
CREATE INDEX registration_attempts_address ON registration_attempts (address, attempted_at);
