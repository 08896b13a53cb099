"""SQL of users_service: profiles. `$n` parameters only."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from shared.errors import NotFound


async def create_profile(conn: asyncpg.Connection, user_id: UUID, display_name: str) -> None:
    await conn.execute("INSERT INTO profiles (id, display_name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", user_id, display_name)


async def get_profile(conn: asyncpg.Connection, user_id: UUID, *, for_update: bool = False) -> asyncpg.Record:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT id, display_name, banned FROM profiles WHERE id = $1{lock}", user_id)
    if row is None:
        raise NotFound("No user with that id")
    return row


async def mark_banned(conn: asyncpg.Connection, user_id: UUID, by: UUID, reason: str | None) -> None:
    await conn.execute(
        "UPDATE profiles SET banned = true, banned_at = now(), banned_by = $2, ban_reason = $3 WHERE id = $1",
        user_id,
        by,
        reason,
    )


def profile_view(row: asyncpg.Record) -> dict[str, Any]:
    """A profile as anyone may see it: never the email."""
    return {"id": str(row["id"]), "display_name": row["display_name"], "banned": row["banned"]}
