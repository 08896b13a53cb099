"""auth_service's wiring: which commands it handles, under which policy, and its JWKS route."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from aiohttp import web

from auth_service.handlers import AuthHandlers
from auth_service.issuer import TokenIssuer
from auth_service.keys import load_signing_key
from shared.authorization import PUBLIC, USER
from shared.events import SessionRevoked, UserBanned
from shared.revocation import on_session_revoked
from shared.routes import command, event
from shared.service import Wiring
from shared.settings import Settings
from shared.tokens import StaticKeySource

NAME = "auth"
MIGRATIONS = Path(__file__).with_name("migrations")


async def wire(settings: Settings, pool: asyncpg.Pool) -> Wiring:
    key = await load_signing_key(settings, pool)
    issuer = TokenIssuer(key, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    handlers = AuthHandlers(settings, pool, issuer)
    jwks = {"keys": [key.public_jwk()]}

    async def jwks_view(_: web.Request) -> web.Response:
        return web.json_response(jwks, headers={"Cache-Control": "public, max-age=300"})

    return Wiring(
        commands=[
            command("register", handlers.register, policy=PUBLIC),
            command("login", handlers.login, policy=PUBLIC, replays=False),
            command("logout", handlers.logout, policy=USER),
            command("get-me", handlers.get_me, policy=USER, replays=False),
        ],
        events=[
            event("session.revoked", on_session_revoked, model=SessionRevoked),
            event("user.banned", handlers.on_user_banned, model=UserBanned),
        ],
        http_port=settings.auth_http_port,
        key_source=StaticKeySource({key.kid: key.verification_key()}),
        http_routes=[web.get("/.well-known/jwks.json", jwks_view)],
    )
