"""posts_service's wiring: commands with their policies, and the events it listens to."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from posts_service.handlers import create_post, delete_post, get_post, list_posts, load_post_author
from shared.authorization import PUBLIC, USER, OwnerOrAdmin
from shared.events import SessionRevoked, UserBanned
from shared.revocation import on_session_revoked, on_user_banned
from shared.routes import command, event
from shared.service import Wiring
from shared.settings import Settings

NAME = "posts"
MIGRATIONS = Path(__file__).with_name("migrations")


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    return Wiring(
        commands=[
            command("create-post", create_post, policy=USER),
            command("get-post", get_post, policy=PUBLIC, replays=False, reads_only=True),
            command("list-posts", list_posts, policy=PUBLIC, replays=False, reads_only=True),
            command("delete-post", delete_post, policy=OwnerOrAdmin(load_post_author, action="delete this post")),
        ],
        events=[
            event("session.revoked", on_session_revoked, model=SessionRevoked),
            event("user.banned", on_user_banned, model=UserBanned),
        ],
        http_port=settings.posts_http_port,
    )
