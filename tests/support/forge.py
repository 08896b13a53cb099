"""Makes tokens good and bad, to prove the services tell them apart.

The stack signs with a key the tests generated, so the forge can also sign tokens that are
correctly signed but wrong in one claim (expired, wrong audience, wrong issuer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any
from uuid import uuid4

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import thumbprint

#: The names of `TokenForge.bad_tokens()`, in its order, for parametrizing before a forge exists.
BAD_TOKENS = (
    "no token",
    "garbage token",
    "alg none",
    "HS256 with the public key",
    "foreign key with the real kid",
    "expired",
    "wrong aud",
    "wrong iss",
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenForge:
    def __init__(self, key: Ed25519PrivateKey, *, issuer: str, audience: str) -> None:
        self.key = key
        self.kid = thumbprint(key.public_key())
        self.issuer = issuer
        self.audience = audience

    def claims(self, sub: str, sid: str, *, role: str = "user", ttl: int = 600, **overrides: Any) -> dict[str, Any]:
        """Claims of a good token; an override of None leaves that claim out."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "sid": sid,
            "role": role,
            "iat": now,
            "exp": now + ttl,
            "jti": str(uuid4()),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, key: Ed25519PrivateKey | None = None, headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": self.kid, **(headers or {})})

    def alg_none(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": self.kid}).encode())
        return f"{header}.{_b64(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic key-confusion attack: HMAC keyed with the server's public key."""
        public_pem = self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": self.kid}).encode())
        payload = _b64(json.dumps(claims).encode())
        signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def foreign_key(self, claims: dict[str, Any]) -> str:
        """Signed by a key auth_service never had, under the real key's kid."""
        return self.sign(claims, key=Ed25519PrivateKey.generate())

    def bad_tokens(self, sub: str, sid: str, *, role: str = "user") -> dict[str, str | None]:
        """Every way a token can be wrong without touching the session, by name; each claims
        `role`, so only the flaw differs from a good token of that holder."""
        now = int(time.time())

        def claims(**overrides: Any) -> dict[str, Any]:
            return self.claims(sub, sid, role=role, **overrides)

        tokens = {
            "no token": None,
            "garbage token": "not-a-jwt",
            "alg none": self.alg_none(claims()),
            "HS256 with the public key": self.hs256_with_public_key(claims()),
            "foreign key with the real kid": self.foreign_key(claims()),
            "expired": self.sign(claims(iat=now - 1200, exp=now - 600)),
            "wrong aud": self.sign(claims(aud="someone-else")),
            "wrong iss": self.sign(claims(iss="evil-issuer")),
        }
        assert tuple(tokens) == BAD_TOKENS
        return tokens
