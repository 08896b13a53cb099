"""Revoked sessions and banned accounts, as each service knows them.

Every service keeps its own copy in its own schema, filled from `session.revoked` and
`user.banned` events (and directly by the service that revokes or bans), so a logout or ban holds
everywhere within a second and survives restarts. These tables only ever grow: no event can
un-revoke a session or unban an account.
"""

from __future__ import annotations

from uuid import UUID

from shared.database import Connection
from shared.errors import Forbidden, Unauthorized
from shared.events import SessionRevoked, UserBanned
from shared.outbox import add_event
from shared.tokens import Caller


def caller_state_sql(session_id: str, user_id: str) -> str:
    """The select-list columns `revoked` and `banned` for the session and account at the given
    placeholders, for `check_caller` and for statements that check the caller on the way."""
    return (
        f"EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = {session_id}) AS revoked,"
        f" EXISTS (SELECT 1 FROM banned_accounts WHERE user_id = {user_id}) AS banned"
    )


async def check_caller(conn: Connection, caller: Caller) -> None:
    """401 if the caller's session was revoked, 403 if the account is banned."""
    row = await conn.fetchrow(f"SELECT {caller_state_sql('$1', '$2')}", caller.session_id, caller.subject)
    assert row is not None
    refuse(revoked=row["revoked"], banned=row["banned"])


def refuse(*, revoked: bool, banned: bool) -> None:
    """403 for a banned account, else 401 for a revoked session."""
    if banned:
        raise Forbidden("Your account is banned")
    if revoked:
        raise Unauthorized("Your session has ended; sign in again")


async def revoke_session(conn: Connection, session_id: UUID, user_id: UUID) -> bool:
    """Revoke a session here and tell every other service; False if it was already revoked."""
    inserted = await conn.fetchval(
        "INSERT INTO revoked_sessions (session_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        session_id,
        user_id,
    )
    if inserted:
        await add_event(conn, "session.revoked", {"session_id": str(session_id), "user_id": str(user_id)})
    return bool(inserted)


async def record_ban(conn: Connection, user_id: UUID) -> bool:
    """Remember that an account is banned; False if it already was."""
    return bool(await conn.fetchval("INSERT INTO banned_accounts (user_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", user_id))


async def on_session_revoked(event: SessionRevoked, conn: Connection) -> None:
    await conn.execute(
        "INSERT INTO revoked_sessions (session_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        event.session_id,
        event.user_id,
    )


async def on_user_banned(event: UserBanned, conn: Connection) -> None:
    await record_ban(conn, event.user_id)
