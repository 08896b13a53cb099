"""Opening, refreshing and closing sessions: the one place a token is minted or a session revoked.

A person's session (login) carries an access token and a refresh token; `refresh_session` trades
the refresh token for a new pair in the same session. A service account's session (issue-service-
token) has an access token only. Closing a session ends its refresh tokens too: they are only good
while their session row is open. Login and refresh note when and from where a session was last
used, which is what list-sessions shows its owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from auth_service import repository
from auth_service.issuer import IssuedToken, TokenIssuer
from auth_service.refresh_tokens import new_refresh_token, refresh_expiry, token_hash
from shared.envelope import current_message
from shared.revocation import revoke_session
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What login and refresh answer: an access token and the refresh token that renews it."""

    access: IssuedToken
    refresh_token: str
    refresh_expires_at: datetime
    session_id: UUID

    def response(self) -> dict[str, object]:
        """The `TokenResponse` of shared/results.py."""
        return {
            "access_token": self.access.token,
            "token_type": "Bearer",
            "expires_in": self.access.expires_at - self.access.issued_at,
            "refresh_token": self.refresh_token,
            # Whole seconds, rounded down, so a client never counts on a second it does not have.
            "refresh_expires_in": max(0, int(self.refresh_expires_at.timestamp()) - self.access.issued_at),
        }


async def open_session(
    conn: asyncpg.Connection | PoolConnectionProxy,
    issuer: TokenIssuer,
    account: asyncpg.Record,
    ttl_seconds: int,
    session_id: UUID | None = None,
) -> IssuedToken:
    """A new session for `account` and the access token that carries it."""
    session_id = session_id or uuid4()
    issued = issuer.issue(
        subject=account["id"],
        session_id=session_id,
        role=account["role"],
        kind=account["kind"],
        ttl_seconds=ttl_seconds,
        token_id=issuer.new_token_id(),
    )
    await repository.create_session(conn, session_id, account["id"], issued.token_id, datetime.fromtimestamp(issued.expires_at, UTC))
    return issued


async def open_refreshable_session(
    conn: asyncpg.Connection | PoolConnectionProxy, issuer: TokenIssuer, account: asyncpg.Record, settings: Settings
) -> TokenPair:
    """A new session for a person: an access token and a refresh token."""
    session_id = uuid4()
    access = await open_session(conn, issuer, account, settings.access_token_ttl_seconds, session_id)
    issued_at = datetime.fromtimestamp(access.issued_at, UTC)
    return await _pair(conn, access, session_id, account["id"], issued_at, settings)


async def refresh_session(
    conn: asyncpg.Connection | PoolConnectionProxy,
    issuer: TokenIssuer,
    account: asyncpg.Record,
    session_id: UUID,
    session_created_at: datetime,
    used_token_hash: bytes,
    settings: Settings,
) -> TokenPair:
    """A new pair in `session_id` for the refresh token whose hash is `used_token_hash`, which is
    then used up. The caller has judged the token and locked the session open."""
    access = issuer.issue(
        subject=account["id"],
        session_id=session_id,
        role=account["role"],
        kind=account["kind"],
        ttl_seconds=settings.access_token_ttl_seconds,
        token_id=issuer.new_token_id(),
    )
    pair = await _pair(conn, access, session_id, account["id"], session_created_at, settings)
    await repository.mark_refresh_token_used(
        conn, used_token_hash, token_hash(pair.refresh_token), session_id, datetime.fromtimestamp(access.expires_at, UTC)
    )
    return pair


async def _pair(
    conn: asyncpg.Connection | PoolConnectionProxy,
    access: IssuedToken,
    session_id: UUID,
    account_id: UUID,
    session_created_at: datetime,
    settings: Settings,
) -> TokenPair:
    refresh_token = new_refresh_token()
    expires_at = refresh_expiry(
        datetime.fromtimestamp(access.issued_at, UTC),
        session_created_at,
        settings.refresh_token_ttl_seconds,
        settings.session_max_age_seconds,
    )
    await repository.create_refresh_token(conn, token_hash(refresh_token), session_id, account_id, access.token_id, expires_at)
    return TokenPair(access, refresh_token, expires_at, session_id)


async def record_use(conn: asyncpg.Connection | PoolConnectionProxy, pair: TokenPair) -> None:
    """Note in the session's row that it was used just now, from where the gateway saw the client
    (list-sessions shows it). Login and refresh call this; other commands do not, so listing
    sessions costs no write on every command in every service."""
    ctx = current_message()
    await repository.record_session_use(conn, pair.session_id, ctx.client_address if ctx else None, ctx.client_user_agent if ctx else None)


def session_view(row: asyncpg.Record, current_session_id: UUID) -> dict[str, Any]:
    """A `SessionInfo` of shared/results.py."""
    return {
        "id": row["id"],
        "created_at": row["created_at"].isoformat(),
        "last_used_at": row["last_used_at"].isoformat(),
        "user_agent": row["user_agent"],
        "address": row["client_address"],
        "current": row["id"] == current_session_id,
    }


async def close_session(conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID, account_id: UUID) -> None:
    """Revoke one session here and, through the `session.revoked` event, everywhere."""
    await repository.mark_session_revoked(conn, session_id)
    await revoke_session(conn, session_id, account_id)


async def close_all_sessions(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID) -> int:
    sessions = await repository.active_sessions(conn, account_id)
    for session_id in sessions:
        await close_session(conn, session_id, account_id)
    return len(sessions)
