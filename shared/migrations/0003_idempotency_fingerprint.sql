-- What each remembered command carried: a repeat of its message_id with another payload is a
-- client error (422, the IETF idempotency-key draft), not a replay of the first reply. Rows
-- written before this column existed have none and replay as before.
ALTER TABLE processed_commands ADD COLUMN fingerprint bytea;
