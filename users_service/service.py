"""users_service's wiring: its handlers bound to the commands and events declared for it."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from shared.routes import bind_commands, bind_events
from shared.service import Wiring
from shared.settings import Settings
from users_service.handlers import EVENT_HANDLERS, HANDLERS

NAME = "users"
MIGRATIONS = Path(__file__).with_name("migrations")


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    return Wiring(
        commands=bind_commands(NAME, HANDLERS),
        events=bind_events(NAME, EVENT_HANDLERS),
        http_port=settings.users_http_port,
    )
