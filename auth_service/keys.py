"""The Ed25519 key auth_service signs with, and the JWKS that publishes its public half.

The key comes from `AUTH_SIGNING_KEY_FILE` (PEM, PKCS#8). Without one, a development key is
generated once, kept in the `auth` schema so every instance and restart signs with the same key,
and a warning says so: that is fine on a laptop and wrong in production.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.settings import ConfigurationError, Settings
from shared.tokens import ALGORITHM

log = logging.getLogger(__name__)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        return cls(private, thumbprint(private.public_key()))

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private.public_key(), self.kid)

    def verification_key(self) -> jwt.PyJWK:
        return jwt.PyJWK(self.public_jwk(), algorithm=ALGORITHM)


def public_jwk(public: Ed25519PublicKey, kid: str) -> dict[str, Any]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def thumbprint(public: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint, used as the `kid`."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def load_pem(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{source} is not a readable unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{source} must hold an Ed25519 private key")
    return key


def to_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


async def load_signing_key(settings: Settings, pool: asyncpg.Pool) -> SigningKey:
    if settings.auth_signing_key_file:
        path = Path(settings.auth_signing_key_file)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"AUTH_SIGNING_KEY_FILE cannot be read: {exc}") from None
        return SigningKey.from_private(load_pem(pem, "AUTH_SIGNING_KEY_FILE"))
    async with pool.acquire() as conn:
        # Two instances starting at once must end up with one key: insert-if-absent, then read.
        await conn.execute(
            "INSERT INTO signing_keys (name, private_pem) VALUES ('development', $1) ON CONFLICT DO NOTHING",
            to_pem(Ed25519PrivateKey.generate()),
        )
        pem_text = await conn.fetchval("SELECT private_pem FROM signing_keys WHERE name = 'development'")
    log.warning(
        "AUTH_SIGNING_KEY_FILE is not set: signing with a development key kept in the database. "
        "Set AUTH_SIGNING_KEY_FILE to a PKCS#8 Ed25519 key in production."
    )
    return SigningKey.from_private(load_pem(pem_text.encode(), "the development signing key"))
