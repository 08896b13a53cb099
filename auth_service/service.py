"""auth_service's wiring: its handlers bound to the commands and events declared for it, and its JWKS route."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from aiohttp import web

from auth_service.admission import password_admission
from auth_service.handlers import AuthHandlers
from auth_service.issuer import TokenIssuer
from auth_service.keys import load_signing_key
from shared.database import create_pool
from shared.routes import bind_commands, bind_events
from shared.service import Wiring
from shared.settings import Settings
from shared.tokens import StaticKeySource

NAME = "auth"
MIGRATIONS = Path(__file__).with_name("migrations")
#: Connections for rate-limit rows, which are written outside the command's transaction. Each
#: write is one short transaction, so two keep up with any rate the hashing threads allow.
LIMITS_POOL_SIZE = 2


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    key = await load_signing_key(settings, pool)
    issuer = TokenIssuer(key, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    limits_pool = await create_pool(settings.database_url, NAME, min_size=1, max_size=LIMITS_POOL_SIZE)
    handlers = AuthHandlers(settings, limits_pool, issuer, password_admission())
    jwks = {"keys": [key.public_jwk()]}

    async def jwks_view(_: web.Request) -> web.Response:
        return web.json_response(jwks, headers={"Cache-Control": "public, max-age=300"})

    return Wiring(
        commands=bind_commands(NAME, handlers.commands()),
        events=bind_events(NAME, handlers.events()),
        http_port=settings.auth_http_port,
        key_source=StaticKeySource({key.kid: key.verification_key()}),
        http_routes=[web.get("/.well-known/jwks.json", jwks_view)],
        closers=[limits_pool.close],
    )
