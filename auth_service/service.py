"""auth_service's wiring: its handlers bound to the commands and events declared for it, its key
ring (reloaded in the background) and the JWKS route that publishes it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import asyncpg
from aiohttp import web

from auth_service import retention
from auth_service.admission import password_admission
from auth_service.handlers import AuthHandlers
from auth_service.issuer import TokenIssuer
from auth_service.keys import JWKS_MAX_AGE_SECONDS, open_key_ring
from shared.database import create_pool
from shared.routes import bind_commands, bind_events
from shared.service import Wiring
from shared.settings import Settings

NAME = "auth"
MIGRATIONS = Path(__file__).with_name("migrations")
#: Connections for rate-limit rows, which are written outside the command's transaction. Each
#: write is one short transaction, so two keep up with any rate the hashing threads allow.
LIMITS_POOL_SIZE = 2


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    keys = await open_key_ring(settings, pool)
    issuer = TokenIssuer(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    limits_pool = await create_pool(settings.database_url, NAME, min_size=1, max_size=LIMITS_POOL_SIZE)
    handlers = AuthHandlers(settings, limits_pool, issuer, password_admission())

    async def jwks_view(_: web.Request) -> web.Response:
        # A short max-age: verifiers refetch when it runs out, which is how a retired key leaves
        # every service within about a second (a new key needs no such thing: an unknown kid is
        # fetched at once).
        return web.json_response(keys.jwks(), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"})

    return Wiring(
        commands=bind_commands(NAME, handlers.commands()),
        events=bind_events(NAME, handlers.events()),
        http_port=settings.auth_http_port,
        key_source=keys,
        http_routes=[web.get("/.well-known/jwks.json", jwks_view)],
        background=[keys.run, partial(retention.purge_forever, pool)],
        closers=[limits_pool.close],
    )
