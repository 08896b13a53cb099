"""Every route of the gateway, on one screen: the declared commands' bindings, then the platform's."""

from __future__ import annotations

from aiohttp import web

from gateway import health, openapi, views
from shared.commands import COMMANDS


def setup_routes(app: web.Application) -> None:
    app.add_routes(
        [
            # Each command with an HTTP binding (shared/commands.py), e.g. PATCH /posts/{post_id} -> edit-post.
            *(web.route(c.http.method, c.http.path, views.command_view(c)) for c in COMMANDS.values() if c.http),
            web.get("/audit", views.list_audit),
            web.get("/live", views.live, allow_head=False),  # a HEAD would hold an endless stream open
            web.get("/.well-known/jwks.json", views.jwks),
            web.get("/openapi.json", openapi.openapi_json),
            web.get("/docs", openapi.docs_page),
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/metrics", health.metrics),
            web.get("/", views.index),
            web.static("/static", views.STATIC),
        ]
    )
