-- What a person sees of their sessions (list-sessions): when each was last used to sign in or
-- refresh, and from where, as the gateway saw the client. Written at login and at each refresh
-- only, never on other commands, so keeping it costs no write on the hot path. Existing sessions
-- keep NULLs: they were opened before anyone recorded these.
ALTER TABLE sessions
    ADD COLUMN last_used_at    timestamptz,
    ADD COLUMN user_agent      text,
    ADD COLUMN client_address  text;
