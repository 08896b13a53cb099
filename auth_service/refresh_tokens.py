"""Refresh tokens: what they are, and the verdict on one that is presented.

A refresh token is 256 random bits, URL-safe base64: opaque to its holder and to every service, so
nothing but auth_service's table gives it meaning. Only its SHA-256 is kept (a fast hash is
enough for a random secret of that size: there is no dictionary to try), so a copy of the table
holds nothing that can be presented.

Each token is good for one use. A token presented again more than REFRESH_REUSE_GRACE_SECONDS
after its first use means two parties hold it, one of them a thief (RFC 9700 §4.14.2): the
session is revoked. Within the grace (two tabs of one browser refreshing at the same moment) it is
answered like the first time.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg

#: Bytes of randomness in a refresh token: 256 bits.
TOKEN_BYTES = 32


class Verdict(enum.Enum):
    """What a presented refresh token may do, in the order they are checked."""

    UNKNOWN = "unknown"
    BANNED = "banned"
    REUSED = "reused"
    CLOSED = "closed"
    EXPIRED = "expired"
    FIRST_USE = "first use"
    WITHIN_GRACE = "within grace"

    @property
    def refreshes(self) -> bool:
        return self in (Verdict.FIRST_USE, Verdict.WITHIN_GRACE)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def refresh_expiry(now: datetime, session_created_at: datetime, ttl_seconds: int, session_max_age_seconds: int) -> datetime:
    """When a refresh token issued `now` expires: after `ttl_seconds` unused, and never later
    than the session's absolute age."""
    return min(now + timedelta(seconds=ttl_seconds), session_created_at + timedelta(seconds=session_max_age_seconds))


def judge(row: asyncpg.Record | None, *, grace_seconds: int, session_max_age_seconds: int) -> Verdict:
    """The verdict on a token, from `repository.find_refresh_token`'s row (None: no such token).

    A banned account comes first (its answer is 403 whatever else is true); reuse before expiry
    and a closed session, so that a stolen token presented late still ends its session."""
    if row is None:
        return Verdict.UNKNOWN
    if row["banned"]:
        return Verdict.BANNED
    now: datetime = row["now"]
    used_at: datetime | None = row["used_at"]
    if used_at is not None and (grace_seconds <= 0 or now - used_at > timedelta(seconds=grace_seconds)):
        return Verdict.REUSED if row["session_revoked_at"] is None else Verdict.CLOSED
    if row["session_revoked_at"] is not None:
        return Verdict.CLOSED
    if now >= row["expires_at"] or now >= row["session_created_at"] + timedelta(seconds=session_max_age_seconds):
        return Verdict.EXPIRED
    return Verdict.FIRST_USE if used_at is None else Verdict.WITHIN_GRACE
