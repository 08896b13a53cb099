"""users_service's wiring: commands with their policies, and the events it listens to."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from shared.authorization import ADMIN, PUBLIC
from shared.events import SessionRevoked, UserBanned, UserRegistered
from shared.revocation import on_session_revoked
from shared.routes import command, event
from shared.service import Wiring
from shared.settings import Settings
from users_service.handlers import ban_user, get_user, on_user_banned_profile, on_user_registered

NAME = "users"
MIGRATIONS = Path(__file__).with_name("migrations")


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    return Wiring(
        commands=[
            command("get-user", get_user, policy=PUBLIC, replays=False, reads_only=True),
            command("ban-user", ban_user, policy=ADMIN),
        ],
        events=[
            event("user.registered", on_user_registered, model=UserRegistered),
            event("user.banned", on_user_banned_profile, model=UserBanned),
            event("session.revoked", on_session_revoked, model=SessionRevoked),
        ],
        http_port=settings.users_http_port,
    )
