"""The OpenAPI 3.1 document of the HTTP API, derived from the command declarations.

Each command with an HTTP binding (shared/commands.py) is an operation: its path and method, its
request body (the payload model the services enforce, without the path's fields), its query
parameters, its result model, whether it needs a token, and the error statuses that its policy,
payload and binding imply. The document cannot drift from what the code accepts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from gateway import schemas
from shared.commands import COMMANDS, RESOURCES
from shared.declarations import SERVICE_NAMES, Command
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
    415: "The body is not sent as Content-Type: application/json",
    422: "Fields missing, unknown or of the wrong type",
    429: "Too many attempts; see Retry-After",
    503: "The broker or a service is down, or too busy (password hashing); see Retry-After",
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


def _errors(command: Command, *, body: bool, query: bool, takes_key: bool) -> list[int]:
    """The statuses a command's route can answer, from what its declaration says it does."""
    http = command.http
    assert http is not None
    found = set(command.errors)
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
        found |= {409, 422}  # an Idempotency-Key used for another command; a malformed one
    return sorted(found)


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
    params = [_path_id(name) for name in http.path_fields] + _query_params(command)
    takes_key = command.takes_idempotency_key
    errors = _errors(command, body=body is not None, query=bool(_query_params(command)), takes_key=takes_key)
    ok = (http.status, command.summary, command.result)
    operation = _op(
        f"{command.summary} {command.policy.describe()}",
        ok=ok,
        errors=errors,
        secured=command.guarded,
        mutating=takes_key,
        params=params or None,
    )
    operation["operationId"] = command.name
    if body is not None:
        operation["requestBody"] = {
            "required": not command.accepts_empty_body(),
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body[0])}}},
        }
    return operation


def _add_model(model: type[BaseModel], components: dict[str, Any], mode: JsonSchemaMode) -> None:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema


@lru_cache(maxsize=1)
def build_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for command in COMMANDS.values():
        if command.http is not None:
            paths.setdefault(command.http.path, {})[command.http.method.lower()] = _command_operation(command, components)
    for model in (schemas.Problem, schemas.AuditPage):
        _add_model(model, components, "serialization")
    paths.update(
        {
            "/audit": {
                "get": _op(
                    "Authorization decisions of one service, newest first (admins only)",
                    ok=(200, "A page of audit entries", schemas.AuditPage),
                    errors=[401, 403, 422],
                    secured=True,
                    params=[
                        {"name": "service", "in": "query", "required": True, "schema": {"type": "string", "enum": list(SERVICE_NAMES)}},
                        {
                            "name": "decision",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["allowed", "denied", "replayed"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                        },
                        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}},
                    ],
                )
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "The public keys tokens are signed with",
                    "responses": {"200": {"description": "A JWKS"}, "503": {"description": "Unavailable", "content": PROBLEM}},
                }
            },
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "Up"}}}},
            "/readyz": {
                "get": {
                    "summary": "The broker and every service are reachable",
                    "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready", "content": PROBLEM}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
                }
            },
            "/": {"get": {"summary": "The web UI", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        }
    )
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
<script src="/static/docs.js"></script>
</body></html>"""


async def docs_page(_: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")
