"""Opening and closing sessions: the one place a token is minted or a session revoked."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from auth_service import repository
from auth_service.issuer import IssuedToken, TokenIssuer
from shared.revocation import revoke_session


async def open_session(
    conn: asyncpg.Connection | PoolConnectionProxy, issuer: TokenIssuer, account: asyncpg.Record, ttl_seconds: int
) -> IssuedToken:
    """A new session for `account` and the access token that carries it."""
    session_id = uuid4()
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


async def close_session(conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID, account_id: UUID) -> None:
    """Revoke one session here and, through the `session.revoked` event, everywhere."""
    await repository.mark_session_revoked(conn, session_id)
    await revoke_session(conn, session_id, account_id)


async def close_all_sessions(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID) -> int:
    sessions = await repository.active_sessions(conn, account_id)
    for session_id in sessions:
        await close_session(conn, session_id, account_id)
    return len(sessions)
