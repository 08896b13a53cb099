"""The OpenAPI 3.1 document of the HTTP API, built from the pydantic models that validate it.

Request bodies come from `shared.commands` (the same models the services enforce) and response
bodies from `gateway.schemas`, so the document cannot drift from what the code accepts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway import schemas
from shared.commands import CreatePost, Login, Register
from shared.idempotency import IDEMPOTENCY_KEY_PATTERN

REF = "#/components/schemas/{model}"
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

_ERRORS = {
    400: "The body is not valid JSON",
    401: "No token, or a token that does not verify, or a revoked session",
    403: "Banned, or not allowed to do this",
    404: "No such resource",
    409: "Conflicts with the current state",
    413: "The body is too large",
    422: "Fields missing, unknown or of the wrong type",
    429: "Too many attempts; see Retry-After",
    503: "The broker or a service is down; see Retry-After",
    504: "The service did not answer in time",
}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _op(
    summary: str,
    *,
    ok: tuple[int, str, type[BaseModel] | None],
    errors: list[int],
    body: type[BaseModel] | None = None,
    secured: bool = False,
    mutating: bool = False,
    params: list[dict[str, Any]] | None = None,
    body_required: bool = True,
) -> dict[str, Any]:
    status, description, model = ok
    responses: dict[str, Any] = {str(status): {"description": description, **({"content": _json(model)} if model else {})}}
    for code in sorted(set(errors) | {503, 504}):
        responses[str(code)] = {"description": _ERRORS[code], "content": PROBLEM}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": _json(body)}
    if secured:
        op["security"] = [{"bearerAuth": []}]
    if mutating:
        op.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
        # A malformed Idempotency-Key is a 422; one already used for another command is a 409.
        responses.setdefault("422", {"description": _ERRORS[422], "content": PROBLEM})
        responses.setdefault("409", {"description": _ERRORS[409], "content": PROBLEM})
    if params:
        op.setdefault("parameters", []).extend(params)
    return op


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    "description": "A retry with the same key and caller returns the first result and has no second effect.",
}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


@lru_cache(maxsize=1)
def build_document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        Register, Login, CreatePost, schemas.BanRequest, schemas.Account, schemas.TokenResponse,
        schemas.Post, schemas.PostPage, schemas.UserProfile, schemas.Problem, schemas.AuditEntry, schemas.AuditPage,
    ]
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF, mode="validation" if model in (Register, Login, CreatePost) else "serialization")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    paths = {
        "/auth/register": {"post": _op("Create an account", body=Register, ok=(201, "The new account", schemas.Account), errors=[400, 409, 413, 422], mutating=True)},
        "/auth/login": {"post": _op("Sign in", body=Login, ok=(200, "An access token", schemas.TokenResponse), errors=[400, 401, 403, 422, 429])},
        "/auth/logout": {"post": _op("Sign out; the session is revoked everywhere", ok=(204, "Signed out", None), errors=[401], secured=True, mutating=True)},
        "/auth/me": {"get": _op("The signed-in account", ok=(200, "The account", schemas.Account), errors=[401, 403], secured=True)},
        "/posts": {
            "get": _op(
                "Posts, newest first", ok=(200, "A page of posts", schemas.PostPage), errors=[422],
                params=[
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            ),
            "post": _op("Write a post", body=CreatePost, ok=(201, "The new post", schemas.Post), errors=[400, 401, 403, 413, 422], secured=True, mutating=True),
        },
        "/posts/{post_id}": {
            "get": _op("One post", ok=(200, "The post", schemas.Post), errors=[404], params=[_path_id("post_id")]),
            "delete": _op("Delete a post (its author or an admin)", ok=(204, "Deleted", None), errors=[401, 403, 404], secured=True, mutating=True, params=[_path_id("post_id")]),
        },
        "/users/{user_id}": {"get": _op("A public profile", ok=(200, "The profile", schemas.UserProfile), errors=[404], params=[_path_id("user_id")])},
        "/users/{user_id}/ban": {
            "post": _op("Ban a user (admins only)", body=schemas.BanRequest, body_required=False, ok=(200, "The banned user", schemas.UserProfile),
                        errors=[400, 401, 403, 404, 409, 422], secured=True, mutating=True, params=[_path_id("user_id")]),
        },
        "/audit": {
            "get": _op(
                "Authorization decisions of one service, newest first (admins only)",
                ok=(200, "A page of audit entries", schemas.AuditPage), errors=[401, 403, 422], secured=True,
                params=[
                    {"name": "service", "in": "query", "required": True, "schema": {"type": "string", "enum": ["auth", "users", "posts"]}},
                    {"name": "decision", "in": "query", "required": False, "schema": {"type": "string", "enum": ["allowed", "denied", "replayed"]}},
                    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}},
                ],
            )
        },
        "/.well-known/jwks.json": {"get": {"summary": "The public keys tokens are signed with", "responses": {"200": {"description": "A JWKS"}, "503": {"description": "Unavailable", "content": PROBLEM}}}},
        "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "Up"}}}},
        "/readyz": {"get": {"summary": "The broker and every service are reachable", "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready", "content": PROBLEM}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}}}},
        "/": {"get": {"summary": "The web UI", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zero-trust posts platform",
            "version": "0.1.0",
            "description": "Every error is application/problem+json (RFC 9457). Every command is re-authorized by the service that runs it.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA, typ at+jwt)"}},
        },
    }


async def openapi_json(_: web.Request) -> web.Response:
    return web.json_response(build_document())


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>API reference</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>API reference</h1><p>The machine-readable document is at <a href="/openapi.json">/openapi.json</a>.</p>
<div id="ops"></div></main>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('ops');
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = document.createElement('section');
      const h = document.createElement('h2');
      h.textContent = method.toUpperCase() + ' ' + path;
      const p = document.createElement('p');
      p.textContent = op.summary + (op.security ? ' (Bearer token)' : '');
      const ul = document.createElement('ul');
      for (const [code, r] of Object.entries(op.responses)) {
        const li = document.createElement('li'); li.textContent = code + ': ' + r.description; ul.appendChild(li);
      }
      section.append(h, p, ul); root.appendChild(section);
    }
  }
});
</script></body></html>"""


async def docs_page(_: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")
