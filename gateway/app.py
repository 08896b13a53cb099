"""The gateway application factory: resources in cleanup contexts, routes, middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway import refresh_cookie
from gateway.broker_link import BrokerLink
from gateway.event_feed import EventFeed
from gateway.keys import BROKER, FEED, HTTP, JWKS, LIVE, METRICS, READ_CACHE, SETTINGS, VERIFIER
from gateway.live import LiveHub
from gateway.metrics import GatewayMetrics
from gateway.middlewares import error_middleware, hide_server_version, metrics_middleware, request_id_middleware, set_security_headers
from gateway.read_cache import ReadCache
from gateway.routes import setup_routes
from shared.settings import Settings
from shared.tokens import JwksKeySource, TokenVerifier


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession()
    settings = app[SETTINGS]
    app[HTTP] = session
    app[JWKS] = JwksKeySource(settings.auth_jwks_url, session)
    app[JWKS].start()  # refetched as its max-age runs out, so a retired key stops verifying here too
    app[VERIFIER] = TokenVerifier(app[JWKS], issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    yield
    await app[JWKS].close()
    await session.close()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    link = BrokerLink(settings.amqp_url, rpc_timeout=settings.rpc_timeout_seconds, topology=settings.broker_topology)
    link.start()
    app[BROKER] = link
    yield
    await link.close()


async def feed_ctx(app: web.Application) -> AsyncIterator[None]:
    """The public events, for the read side; started before the routes serve a request."""
    settings = app[SETTINGS]
    feed = EventFeed(settings.amqp_url, owners=settings.broker_users, on_outcome=app[METRICS].count_event)
    app[FEED] = feed
    # The read cache listens first: it drops what an event makes stale before any other listener
    # (the live stream) can tell a browser to read it again.
    feed.listen(app[READ_CACHE])
    feed.start()
    yield
    await feed.close()


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    """`GET /live`'s hub, one more listener of the feed; its streams end in `on_shutdown` (below)."""
    settings = app[SETTINGS]
    hub = LiveHub(app[METRICS], heartbeat_seconds=settings.live_heartbeat_seconds, max_streams=settings.live_max_streams)
    app[LIVE] = hub
    app[FEED].listen(hub)
    hub.start()
    yield


async def end_live_streams(app: web.Application) -> None:
    """Open streams never finish by themselves: end them first, or graceful shutdown waits its full timeout."""
    if LIVE in app:
        await app[LIVE].close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_message_bytes,
        middlewares=[request_id_middleware, metrics_middleware, error_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    # Holds nothing until the feed is up (feed_ctx): no resource to open or close.
    app[READ_CACHE] = ReadCache(max_entries=settings.read_cache_max_entries, max_bytes=settings.read_cache_max_bytes, metrics=app[METRICS])
    app.on_response_prepare.extend([set_security_headers, refresh_cookie.clear_if_asked])
    hide_server_version()
    app.cleanup_ctx.extend([http_ctx, broker_ctx, feed_ctx, live_ctx])
    app.on_shutdown.append(end_live_streams)
    setup_routes(app)
    return app
