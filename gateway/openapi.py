"""The OpenAPI 3.1 document of the HTTP API, derived from the command declarations.

Each command with an HTTP binding (shared/commands.py) is an operation: its path and method, its
request body (the payload model the services enforce, without the path's fields), its query
parameters, its result model, whether it needs a token, the error statuses that its policy,
payload and binding imply, and the headers its answers carry (`Location`, `Cache-Control`; a public
read's `ETag`, and the 304 of its `If-None-Match`).
The document cannot drift from what the code accepts. The gateway's own routes (audit, keys,
health, metrics, the UI) are described by hand below.

What every answer shares is stated once here and attached to each response: `X-Request-ID`
(gateway/middlewares.py), `WWW-Authenticate` on a 401, `Retry-After` on a 429 or a 503, and the
400 aiohttp's HTTP parser answers in plain text before any route runs. redocly's recommended
rules pass on it (tests/test_openapi_lint.py); schemathesis checks the gateway against it
(tests/test_schemathesis.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from gateway import refresh_cookie, schemas
from gateway.conditional import CACHE_CONTROL
from gateway.read_cache import CACHED_READS
from shared.commands import COMMANDS, RESOURCES
from shared.declarations import SERVICE_NAMES, Command
from shared.envelope import REQUEST_ID
from shared.idempotency import IDEMPOTENCY_KEY_PATTERN

REF = "#/components/schemas/{model}"
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

_ERRORS = {
    400: "The body is not valid JSON (problem+json); or the request could not be parsed as HTTP at all, "
    "a malformed request line or header, or one over 8190 bytes (plain text, before any route runs)",
    401: "No token, or a token that does not verify, or a revoked session",
    403: "Banned, or not allowed to do this",
    404: "No such resource",
    409: "Conflicts with the current state",
    413: "The body is too large",
    415: "The body is not sent as Content-Type: application/json",
    422: "Fields missing, unknown or of the wrong type",
    429: "Too many attempts; see Retry-After",
    503: "The broker or a service is down, or too busy (password hashing); see Retry-After when present",
    504: "The service did not answer in time",
}

#: Response headers, described once (components.headers) and referred to from each response that
#: carries them; `required` says they are on every such response.
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id, in every log line written for it: the client's own X-Request-ID when it "
        "matches this pattern, else a new one",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
    },
    "WWW-Authenticate": {
        "description": 'RFC 6750: `Bearer` when no bearer token was sent, `Bearer error="invalid_token", '
        'error_description="…"` when one was sent and refused',
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
    "Retry-After": {"description": "Seconds to wait before trying again", "required": False, "schema": {"type": "integer", "minimum": 1}},
    "Location": {"description": "Where the new resource is", "required": True, "schema": {"type": "string", "format": "uri-reference"}},
    "Cache-Control": {
        "description": "The answer carries a token or an account: no browser or proxy keeps a copy",
        "required": True,
        "schema": {"type": "string", "const": "no-store"},
    },
    "Set-Cookie": {
        "description": f"With `{refresh_cookie.TRANSPORT_HEADER}: cookie`: the refresh token as `{refresh_cookie.COOKIE}`, "
        f"`Path={refresh_cookie.COOKIE_PATH}; HttpOnly; Secure; SameSite=Strict` (a logout or a refused refresh clears it)",
        "required": False,
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "A strong entity tag of this version (a digest of the body, the same on every gateway): "
        "send it back in If-None-Match to be answered 304 while it is current",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[^"]*"$'},
    },
}
#: The Cache-Control of the public reads (gateway/conditional.py): keep it, but ask again each time.
REVALIDATE = {
    "description": "Public data: a browser or proxy may keep it but must revalidate it (If-None-Match) before each use",
    "required": True,
    "schema": {"type": "string", "const": CACHE_CONTROL},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "ETags of versions the client holds (RFC 9110 §13.1.2, weak comparison; `*` for any): "
    "when the current one is among them the answer is 304 with no body",
}


#: Every request may name itself; an id that does not match the pattern is replaced, never refused.
REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": f"An id for the request, echoed back and logged; one that does not match ^{REQUEST_ID.pattern}$ is replaced",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
    "description": (
        "A retry with the same key, caller and body returns the first result and has no second effect; "
        "the same key and caller with a different body is 422."
    ),
}
REFRESH_TRANSPORT = {
    "name": refresh_cookie.TRANSPORT_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": [refresh_cookie.COOKIE_TRANSPORT]},
    "description": (
        "For web pages: the refresh token goes into an HttpOnly cookie scoped to /auth/refresh instead of the JSON "
        "answer, and a `POST /auth/refresh` with this header and no body takes it from that cookie (SECURITY.md)"
    ),
}
REFRESH_COOKIE = {
    "name": refresh_cookie.COOKIE,
    "in": "cookie",
    "required": False,
    "schema": {"type": "string"},
    "description": f"The refresh token, when this request has `{refresh_cookie.TRANSPORT_HEADER}: cookie` and no body",
}
PUBLIC: list[dict[str, list[str]]] = []  # explicitly no security requirement
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _headers(*names: str, inline: dict[str, bool] | None = None) -> dict[str, Any]:
    """References to HEADERS, and inlined copies of those whose `required` differs on this response."""
    refs: dict[str, Any] = {name: {"$ref": f"#/components/headers/{name}"} for name in names}
    return refs | {name: {**HEADERS[name], "required": required} for name, required in (inline or {}).items()}


def _ok(description: str, content: dict[str, Any] | None = None, *, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A success answer: it carries X-Request-ID (every answer the app makes does) and `headers`."""
    response: dict[str, Any] = {"description": description, "headers": _headers("X-Request-ID", *headers)}
    if content is not None:
        response["content"] = content
    return response


def _error(status: int) -> dict[str, Any]:
    if status == 400:
        # aiohttp's parser refuses unparseable HTTP in plain text, before the middlewares that
        # would make it a problem or add an X-Request-ID; a body that is not JSON is ours.
        content = {**PROBLEM, "text/plain": {"schema": {"type": "string"}}}
        return {"description": _ERRORS[400], "headers": _headers(inline={"X-Request-ID": False}), "content": content}
    headers = {
        401: _headers("X-Request-ID", "WWW-Authenticate"),
        429: _headers("X-Request-ID", inline={"Retry-After": True}),
        503: _headers("X-Request-ID", "Retry-After"),  # a broker outage says when to retry; a shutdown does not
    }.get(status, _headers("X-Request-ID"))
    return {"description": _ERRORS[status], "headers": headers, "content": PROBLEM}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _operation(
    operation_id: str,
    summary: str,
    *,
    ok: dict[str, dict[str, Any]],
    errors: Iterable[int],
    secured: bool,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One operation: any request can be unparseable (400); a command may meet a broker or
    service outage (503) or a slow service (504), so the routes that send one say so in `errors`."""
    responses = {**ok, **{str(code): _error(code) for code in sorted(set(errors) | {400})}}
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": BEARER if secured else PUBLIC,
        "parameters": [*(params or []), REQUEST_ID_PARAMETER],
        "responses": responses,
    }


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _body_schema(command: Command) -> tuple[str, dict[str, Any]] | None:
    """The JSON body a command's route takes: its payload without the path's fields, if any."""
    http = command.http
    assert http is not None
    model = command.payload
    fields = [name for name in model.model_fields if name not in http.path_fields]
    if http.method == "GET" or not fields:
        return None
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    if not http.path_fields:
        return model.__name__, schema
    for name in http.path_fields:
        schema["properties"].pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    if not schema.get("required"):
        schema.pop("required", None)
    schema["title"] = f"{model.__name__}Body"
    return schema["title"], schema


def _query_params(command: Command) -> list[dict[str, Any]]:
    http = command.http
    assert http is not None
    if http.method != "GET":
        return []
    schema = command.payload.model_json_schema(ref_template=REF, mode="validation")
    return [
        {"name": name, "in": "query", "required": name in schema.get("required", []), "schema": prop}
        for name, prop in schema["properties"].items()
        if name not in http.path_fields
    ]


def _errors(command: Command, *, body: bool, query: bool, takes_key: bool) -> set[int]:
    """The statuses a command's route can answer, from what its declaration says it does."""
    http = command.http
    assert http is not None
    found = set(command.errors) | {503, 504}  # every command crosses the broker
    if command.guarded:
        found |= {401, 403}  # a bad token; a banned caller, or one the policy refuses
    if body:
        found |= {400, 413, 415, 422}
    if query:
        found.add(422)
    names_a_resource = any(r.id_field in command.payload.model_fields for r in RESOURCES)
    if http.path_fields or names_a_resource or command.policy.resource is not None:
        found.add(404)
    if takes_key:
        found |= {409, 422}  # an Idempotency-Key used for another command; a malformed one, or one used with another body
    return found


def _command_operation(command: Command, components: dict[str, Any]) -> dict[str, Any]:
    http = command.http
    assert http is not None
    body = _body_schema(command)
    if body is not None:
        name, schema = body
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    if command.result is not None:
        _add_model(command.result, components, "serialization")
    query = _query_params(command)
    params = [_path_id(name) for name in http.path_fields] + query
    takes_key = command.takes_idempotency_key
    if takes_key:
        params.append(IDEMPOTENCY_KEY)
    headers = (("Location",) if http.location else ()) + (("Cache-Control",) if http.no_store else ())
    content = _json(command.result) if command.result is not None else None
    if http.refresh_cookie is not None:
        headers += ("Set-Cookie",)
    if http.refresh_cookie == "issue" and command.result is not None:
        params.append(REFRESH_TRANSPORT)
        if refresh_cookie.reads_cookie(command):
            params.append(REFRESH_COOKIE)
        content = _cookie_answer(command.result, components)
    ok = {str(http.status): _ok(command.summary, content, headers=headers)}
    if command.name in CACHED_READS:  # tagged, revalidated, maybe from the gateway's read cache
        params.append(IF_NONE_MATCH)
        ok = _conditional(ok[str(http.status)])
    operation = _operation(
        command.name,
        f"{command.summary} {command.policy.describe()}",
        ok=ok,
        errors=_errors(command, body=body is not None, query=bool(query), takes_key=takes_key),
        secured=command.guarded,
        params=params,
    )
    if body is not None:
        # A page's refresh sends no body: its token is in the cookie.
        operation["requestBody"] = {
            "required": not (command.accepts_empty_body() or refresh_cookie.reads_cookie(command)),
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body[0])}}},
        }
    return operation


def _conditional(answer: dict[str, Any]) -> dict[str, Any]:
    """A public read's 200, with its ETag and Cache-Control, and the 304 of a current If-None-Match."""
    validators = {"ETag": {"$ref": "#/components/headers/ETag"}, "Cache-Control": REVALIDATE}
    answer["headers"].update(validators)
    not_modified = {
        "description": "Not Modified: the version named in If-None-Match is current; no body",
        "headers": {**_headers("X-Request-ID"), **validators},
    }
    return {"200": answer, "304": not_modified}


def _cookie_answer(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A token answer as JSON (the refresh token in it) or, for a page that asked for the cookie,
    the same without `refresh_token`."""
    full = components[model.__name__]
    web = {
        **full,
        "title": f"{model.__name__}WithCookie",
        "description": "The answer when the refresh token went into the cookie",
        "properties": {k: v for k, v in full["properties"].items() if k != "refresh_token"},
        "required": [k for k in full.get("required", []) if k != "refresh_token"],
    }
    components[web["title"]] = web
    return {"application/json": {"schema": {"anyOf": [{"$ref": REF.format(model=name)} for name in (model.__name__, web["title"])]}}}


def _add_model(model: type[BaseModel], components: dict[str, Any], mode: JsonSchemaMode) -> None:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema


def _status_body(value: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"const": value}}}
    return {"application/json": {"schema": schema}}


def _jwks_answer(schema: dict[str, Any]) -> dict[str, Any]:
    """The key set, with how long it may be kept (short: a rotated or retired key shows within a second)."""
    answer = _ok("A JWKS (RFC 7517)", {"application/json": {"schema": schema}})
    answer["headers"]["Cache-Control"] = {
        "description": "How long the key set may be kept, e.g. `public, max-age=1`",
        "required": True,
        "schema": {"type": "string"},
    }
    return answer


def _live_operation() -> dict[str, Any]:
    """`GET /live` (gateway/live.py): an endless stream, so it is described here and not fuzzed."""
    last_event_id = {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "The id of the last message received: what came after it is replayed, or `event: reload` is sent when it is gone",
    }
    answer = _ok(
        "An endless `text/event-stream`",
        {"text/event-stream": {"schema": {"type": "string"}}},
    )
    answer["headers"]["Cache-Control"] = {"description": "Never kept", "required": True, "schema": {"type": "string", "const": "no-cache"}}
    operation = _operation(
        "get-live", "The public events as Server-Sent Events", ok={"200": answer}, errors={503}, secured=False, params=[last_event_id]
    )
    operation["description"] = (
        "Each public event (`post.created`, `post.edited`, `post.deleted`, `user.banned`) as one message: `event:` its routing key, "
        "`id:` its `event_id`, `data:` its public fields as JSON. A comment line every 15 s keeps the connection open. "
        '`event: reload` (data `{"reason": ...}`) means events may have been missed: read everything again. '
        "A 503 with Retry-After when too many streams are open."
    )
    return operation


def _platform_paths() -> dict[str, dict[str, Any]]:
    """The gateway's own routes (gateway/routes.py) besides the commands'."""
    audit_params = [
        {"name": "service", "in": "query", "required": True, "schema": {"type": "string", "enum": list(SERVICE_NAMES)}},
        {"name": "decision", "in": "query", "required": False, "schema": {"type": "string", "enum": ["allowed", "denied", "replayed"]}},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}},
    ]
    jwks = {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "crv", "kid", "x"],
                    "properties": {name: {"type": "string"} for name in ("kty", "crv", "kid", "x", "alg", "use")},
                },
            }
        },
    }
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/audit": {
            "get": _operation(
                "list-audit",
                "Authorization decisions of one service, newest first (admins only)",
                ok={"200": _ok("A page of audit entries", _json(schemas.AuditPage))},
                errors={401, 403, 422, 503, 504},
                secured=True,
                params=audit_params,
            )
        },
        "/.well-known/jwks.json": {
            "get": {
                **_operation(
                    "get-jwks",
                    "The public keys tokens are signed with",
                    ok={"200": _jwks_answer(jwks)},
                    errors={503},
                    secured=False,
                ),
                "description": (
                    "Every key a valid token may carry: the key that signs now, the next one (published before it signs), "
                    "and older keys while tokens they signed can still be valid. A retired key is never listed. Served with "
                    "`Cache-Control: public, max-age=1`: fetch it again when that runs out, and when a token names an unknown `kid`."
                ),
            }
        },
        "/openapi.json": {
            "get": _operation(
                "get-openapi",
                "This document",
                ok={"200": _ok("OpenAPI 3.1", {"application/json": {"schema": {"type": "object"}}})},
                errors=(),
                secured=False,
            )
        },
        "/docs": {"get": _operation("get-docs", "The API reference, as a page", ok={"200": _ok("HTML", html)}, errors=(), secured=False)},
        "/healthz": {
            "get": _operation("get-health", "The process is up", ok={"200": _ok("Up", _status_body("ok"))}, errors=(), secured=False)
        },
        "/readyz": {
            "get": _operation(
                "get-readiness",
                "The broker and every service are reachable",
                ok={"200": _ok("Ready", _status_body("ready"))},
                errors={503},
                secured=False,
            )
        },
        "/metrics": {
            "get": _operation(
                "get-metrics",
                "Prometheus metrics",
                ok={"200": _ok("Prometheus text format", {"text/plain": {"schema": {"type": "string"}}})},
                errors=(),
                secured=False,
            )
        },
        "/live": {"get": _live_operation()},
        "/": {"get": _operation("get-ui", "The web UI", ok={"200": _ok("HTML", html)}, errors=(), secured=False)},
    }


@lru_cache(maxsize=1)
def build_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for command in COMMANDS.values():
        if command.http is not None:
            paths.setdefault(command.http.path, {})[command.http.method.lower()] = _command_operation(command, components)
    for model in (schemas.Problem, schemas.AuditPage):
        _add_model(model, components, "serialization")
    paths.update(_platform_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zero-trust posts platform",
            "version": "0.1.0",
            "description": "Every error is application/problem+json (RFC 9457). Every command is re-authorized by the service "
            "that runs it. The broker side is asyncapi.yaml in the repository.",
            # The repository has no LICENSE file: nothing is granted, and the document says so (an
            # SPDX LicenseRef, as OpenAPI 3.1 asks, since no SPDX id means "no license").
            "license": {"name": "All rights reserved (no open-source license granted)", "identifier": "LicenseRef-Proprietary"},
        },
        # Relative: the gateway that served this document (OpenAPI 3.1 §4.8.5).
        "servers": [{"url": "/", "description": "The gateway that serves this document"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": HEADERS,
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
<script src="/static/docs.js"></script>
</body></html>"""


async def docs_page(_: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")
