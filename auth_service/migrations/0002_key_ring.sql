-- The key ring: every signing key auth_service's replicas sign with or publish, shared through the
-- database so all replicas agree (AUTH_SIGNING_KEY_FILE, when set, replaces it; see keys.py).
--
-- A key signs from `signs_from` until a newer key's `signs_from` passes (rotate-key inserts the
-- new key a moment ahead, so every replica publishes it before any replica signs with it). It stays
-- in the JWKS while tokens it signed can still be valid: ACCESS_TOKEN_TTL_SECONDS plus leeway after
-- it was superseded, or until `service_tokens_until`, the latest expiry of a long-lived service
-- token it signed. `retired_at` (retire-key, after a leak) withdraws it at once.
-- The development key of 0001 (table signing_keys) is copied in by auth_service on start-up, since
-- its kid is a thumbprint SQL cannot compute; that table is then no longer read.
CREATE TABLE signing_key_ring (
    kid                  text PRIMARY KEY,
    private_pem          text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    signs_from           timestamptz NOT NULL,
    retired_at           timestamptz,
    service_tokens_until timestamptz
);
