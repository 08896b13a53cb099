"""users_service's handlers: get-user, ban-user, and profiles from user.registered; `HANDLERS`.

`ban-user` runs under the ADMIN policy, so by the time it runs the caller's token, session, ban
status and admin role have all been checked by the runner; this code checks the target exists,
bans it, and announces the ban so every service refuses the account within a second.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.commands import BanUser, GetUser
from shared.errors import Conflict
from shared.events import UserBanned, UserRegistered
from shared.outbox import add_event
from shared.revocation import on_session_revoked, record_ban
from shared.routes import CommandHandler, EventHandler
from shared.tokens import Caller
from users_service import repository


async def get_user(cmd: GetUser, _caller: Caller | None, conn: asyncpg.Connection) -> dict[str, Any]:
    return repository.profile_view(await repository.get_profile(conn, cmd.user_id))


async def ban_user(cmd: BanUser, caller: Caller, conn: asyncpg.Connection) -> dict[str, Any]:
    profile = await repository.get_profile(conn, cmd.user_id, for_update=True)
    if cmd.user_id == caller.subject:
        raise Conflict("You cannot ban yourself")
    if not profile["banned"]:
        await repository.mark_banned(conn, cmd.user_id, caller.subject, cmd.reason)
        await record_ban(conn, cmd.user_id)
        await add_event(conn, "user.banned", {"user_id": str(cmd.user_id), "by": str(caller.subject), "reason": cmd.reason})
    return repository.profile_view(await repository.get_profile(conn, cmd.user_id))


async def on_user_registered(event: UserRegistered, conn: asyncpg.Connection) -> None:
    await repository.create_profile(conn, event.user_id, event.display_name[:64])


async def on_user_banned_profile(event: UserBanned, conn: asyncpg.Connection) -> None:
    """A ban announced by another instance: keep the profile's flag in step with the ban list."""
    await record_ban(conn, event.user_id)
    await conn.execute("UPDATE profiles SET banned = true, banned_at = coalesce(banned_at, now()) WHERE id = $1", event.user_id)


HANDLERS: dict[str, CommandHandler] = {"get-user": get_user, "ban-user": ban_user}
EVENT_HANDLERS: dict[str, EventHandler] = {
    "user.registered": on_user_registered,
    "user.banned": on_user_banned_profile,
    "session.revoked": on_session_revoked,
}
