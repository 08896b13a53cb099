"""posts_service's handlers, in the order the lesson's deletePost teaches, and `HANDLERS`.

The runner has checked the session (token, revocation, ban); `delete-post`'s OwnerOrAdmin policy
and `edit-post`'s Owner policy have locked the post (404 if missing) and checked the caller is its
author, or an admin where that is enough (403). What is left here is the change and the event
that lets everything depending on it refresh.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from posts_service import repository
from shared.commands import CreatePost, DeletePost, EditPost, GetPost, ListPosts
from shared.outbox import add_event
from shared.revocation import on_session_revoked, on_user_banned
from shared.routes import CommandHandler, EventHandler
from shared.tokens import Caller


async def create_post(cmd: CreatePost, caller: Caller, conn: asyncpg.Connection) -> dict[str, Any]:
    row = await repository.insert_post(conn, caller.subject, cmd.title, cmd.body)
    await add_event(conn, "post.created", {"post_id": str(row["id"]), "author_id": str(caller.subject)})
    return repository.post_view(row)


async def get_post(cmd: GetPost, _caller: Caller | None, conn: asyncpg.Connection) -> dict[str, Any]:
    return repository.post_view(await repository.get_post(conn, cmd.post_id))


async def list_posts(cmd: ListPosts, _caller: Caller | None, conn: asyncpg.Connection) -> dict[str, Any]:
    rows, next_cursor = await repository.list_posts(conn, cmd.limit, cmd.cursor)
    return {"items": [repository.post_view(r) for r in rows], "next_cursor": next_cursor}


async def edit_post(cmd: EditPost, caller: Caller, conn: asyncpg.Connection) -> dict[str, Any]:
    row = await repository.update_post(conn, cmd.post_id, cmd.title, cmd.body)
    await add_event(conn, "post.edited", {"post_id": str(cmd.post_id), "by": str(caller.subject)})
    return repository.post_view(row)


async def delete_post(cmd: DeletePost, caller: Caller, conn: asyncpg.Connection) -> None:
    await repository.delete_post(conn, cmd.post_id)
    await add_event(conn, "post.deleted", {"post_id": str(cmd.post_id), "by": str(caller.subject)})


HANDLERS: dict[str, CommandHandler] = {
    "create-post": create_post,
    "get-post": get_post,
    "list-posts": list_posts,
    "edit-post": edit_post,
    "delete-post": delete_post,
}
EVENT_HANDLERS: dict[str, EventHandler] = {
    "session.revoked": on_session_revoked,
    "user.banned": on_user_banned,
}
