"""Every route of the gateway, on one screen."""

from __future__ import annotations

from aiohttp import web

from gateway import health, openapi, views


def setup_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.post("/auth/register", views.register),
            web.post("/auth/login", views.login),
            web.post("/auth/logout", views.logout),
            web.get("/auth/me", views.me),
            web.get("/posts", views.list_posts),
            web.post("/posts", views.create_post),
            web.get("/posts/{post_id}", views.get_post),
            web.delete("/posts/{post_id}", views.delete_post),
            web.get("/users/{user_id}", views.get_user),
            web.post("/users/{user_id}/ban", views.ban_user),
            web.get("/audit", views.list_audit),
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
