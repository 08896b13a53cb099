"""Issuing access tokens: RFC 9068 JWTs signed with EdDSA, by whichever key of the ring is current."""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID, uuid4

import jwt

from auth_service.keys import LiveKeyRing
from shared.tokens import ALGORITHM, TOKEN_TYPE


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    issued_at: int
    expires_at: int
    kid: str = ""


class TokenIssuer:
    def __init__(self, keys: LiveKeyRing, *, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience

    def new_token_id(self) -> str:
        return str(uuid4())

    def issue(self, *, subject: UUID, session_id: UUID, role: str, kind: str, ttl_seconds: int, token_id: str) -> IssuedToken:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(subject),
            "sid": str(session_id),
            "role": role,
            "sub_type": kind,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": token_id,
        }
        # The key is picked per token, so a rotation takes effect at the new key's `signs_from`
        # without waiting for anything else.
        key = self._keys.signing_key()
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE, "kid": key.kid})
        return IssuedToken(token, token_id, now, now + ttl_seconds, key.kid)
