"""SQL of posts_service. `$n` parameters only; a missing post is NotFound."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from shared.errors import NotFound, Unprocessable

COLUMNS = "id, author_id, title, body, created_at"


async def insert_post(conn: asyncpg.Connection, author_id: UUID, title: str, body: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO posts (id, author_id, title, body) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}",
        uuid4(),
        author_id,
        title,
        body,
    )
    assert row is not None
    return row


async def get_post(conn: asyncpg.Connection, post_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM posts WHERE id = $1", post_id)
    if row is None:
        raise NotFound("No post with that id")
    return row


async def update_post(conn: asyncpg.Connection, post_id: UUID, title: str | None, body: str | None) -> asyncpg.Record:
    """Change what is given (None keeps the column); the policy has locked the row already."""
    row = await conn.fetchrow(
        f"UPDATE posts SET title = coalesce($2, title), body = coalesce($3, body) WHERE id = $1 RETURNING {COLUMNS}",
        post_id,
        title,
        body,
    )
    if row is None:
        raise NotFound("No post with that id")
    return row


async def delete_post(conn: asyncpg.Connection, post_id: UUID) -> None:
    await conn.execute("DELETE FROM posts WHERE id = $1", post_id)


async def list_posts(conn: asyncpg.Connection, limit: int, cursor: str | None) -> tuple[list[asyncpg.Record], str | None]:
    """A page of posts, newest first, and the cursor of the next page (None on the last)."""
    if cursor is None:
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM posts ORDER BY created_at DESC, id DESC LIMIT $1", limit + 1)
    else:
        created_at, post_id = decode_cursor(cursor)
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM posts WHERE (created_at, id) < ($1, $2) ORDER BY created_at DESC, id DESC LIMIT $3",
            created_at,
            post_id,
            limit + 1,
        )
    page, more = rows[:limit], len(rows) > limit
    return page, encode_cursor(page[-1]) if more else None


def encode_cursor(row: asyncpg.Record) -> str:
    raw = json.dumps([row["created_at"].isoformat(), str(row["id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The position a cursor of `encode_cursor` names; anything else is a 422.

    A cursor comes back from the client, so it is checked as hostile input: base64url of a JSON
    list of exactly two strings, an ISO 8601 instant with its offset that PostgreSQL and Python
    can both hold in UTC, and a UUID. Anything that would otherwise fail later, in a conversion or
    in the driver (an int for the id, a naive or out-of-range date), is refused here."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(part, str) for part in value)):
            raise ValueError("not a pair of strings")
        created_at = datetime.fromisoformat(value[0])
        if created_at.utcoffset() is None:
            raise ValueError("no offset: we only give out instants")
        created_at.astimezone(UTC)  # OverflowError near year 1 or 9999; asyncpg converts to UTC too
        return created_at, UUID(value[1])
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise Unprocessable("cursor: is not a cursor this service gave out") from None


def post_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "author_id": str(row["author_id"]),
        "title": row["title"],
        "body": row["body"],
        "created_at": row["created_at"].isoformat(),
    }
