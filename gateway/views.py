"""The gateway's request handlers: read and check the request, send the command, shape the answer.

Every protected view verifies the token here first (an early 401 saves a hop), then forwards the
same token in the command; the service behind verifies it again and decides. Validation uses the
same pydantic models the services use, so a bad body is a 422 without touching the broker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp import web

from gateway.keys import BROKER, HTTP, METRICS, SETTINGS, VERIFIER
from gateway.middlewares import REQUEST_ID
from shared import jsoncodec
from shared.commands import (
    BanUser, CreatePost, DeletePost, GetPost, GetUser, ListPosts, Login, Payload, Register,
    parse_payload, payload_from_mapping,
)
from shared.audit import ListAudit, audit_command_name
from shared.idempotency import IDEMPOTENCY_KEY_PATTERN
from shared.errors import AppError, BadRequest, NotFound, ServiceUnavailable, Unprocessable
from shared.tokens import bearer_token

STATIC = Path(__file__).with_name("static")


# -- helpers ---------------------------------------------------------------------------------

def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsoncodec.dumps(data), status=status, headers=headers, content_type="application/json")


async def authenticate(request: web.Request) -> str:
    """The request's bearer token, verified (signature, alg, typ, iss, aud, exp), or 401."""
    token = bearer_token(request.headers.get("Authorization"))
    await request.app[VERIFIER].verify(token)
    return token


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise Unprocessable("Idempotency-Key must be 1 to 200 visible ASCII characters")
    return key


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    body = await request.read()
    if not body.strip() and optional:
        return {}
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        raise BadRequest("The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Unprocessable("The body must be a JSON object")
    return data


async def read_payload(request: web.Request, model: type[Payload]) -> dict[str, Any]:
    payload = parse_payload(model, await request.read())
    return payload.model_dump(mode="json")


def path_uuid(request: web.Request, name: str, what: str) -> str:
    try:
        return str(UUID(request.match_info[name]))
    except ValueError:
        raise NotFound(f"No {what} with that id") from None


async def send(
    request: web.Request, command: str, payload: dict[str, Any], *, token: str | None = None, mutating: bool = False
) -> Any:
    client = request.app[BROKER].client
    try:
        result = await client.call(
            command,
            payload,
            token=token,
            message_id=idempotency_key(request) if mutating else None,
            request_id=request[REQUEST_ID],
            client_address=request.remote,
        )
    except AppError as exc:
        request.app[METRICS].commands.labels(command, str(exc.status)).inc()
        raise
    request.app[METRICS].commands.labels(command, "ok").inc()
    return result


# -- auth ------------------------------------------------------------------------------------

async def register(request: web.Request) -> web.Response:
    result = await send(request, "register", await read_payload(request, Register), mutating=True)
    return json_response(result, status=201)


async def login(request: web.Request) -> web.Response:
    return json_response(await send(request, "login", await read_payload(request, Login)))


async def logout(request: web.Request) -> web.Response:
    token = await authenticate(request)
    await send(request, "logout", {}, token=token, mutating=True)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    token = await authenticate(request)
    return json_response(await send(request, "get-me", {}, token=token))


# -- posts -----------------------------------------------------------------------------------

async def list_posts(request: web.Request) -> web.Response:
    query: dict[str, Any] = {}
    if "limit" in request.query:
        try:
            query["limit"] = int(request.query["limit"])
        except ValueError:
            raise Unprocessable("limit: must be a whole number from 1 to 100") from None
    if "cursor" in request.query:
        query["cursor"] = request.query["cursor"]
    payload = payload_from_mapping(ListPosts, query).model_dump(mode="json")
    return json_response(await send(request, "list-posts", payload))


async def get_post(request: web.Request) -> web.Response:
    payload = payload_from_mapping(GetPost, {"post_id": path_uuid(request, "post_id", "post")})
    return json_response(await send(request, "get-post", payload.model_dump(mode="json")))


async def create_post(request: web.Request) -> web.Response:
    token = await authenticate(request)
    post = await send(request, "create-post", await read_payload(request, CreatePost), token=token, mutating=True)
    return json_response(post, status=201, headers={"Location": f"/posts/{post['id']}"})


async def delete_post(request: web.Request) -> web.Response:
    token = await authenticate(request)
    payload = payload_from_mapping(DeletePost, {"post_id": path_uuid(request, "post_id", "post")})
    await send(request, "delete-post", payload.model_dump(mode="json"), token=token, mutating=True)
    return web.Response(status=204)


# -- users -----------------------------------------------------------------------------------

async def get_user(request: web.Request) -> web.Response:
    payload = payload_from_mapping(GetUser, {"user_id": path_uuid(request, "user_id", "user")})
    return json_response(await send(request, "get-user", payload.model_dump(mode="json")))


async def ban_user(request: web.Request) -> web.Response:
    token = await authenticate(request)
    user_id = path_uuid(request, "user_id", "user")
    body = await read_json_object(request, optional=True)
    if "user_id" in body:
        raise Unprocessable("user_id: is not a field of this request (it is in the path)")
    payload = parse_payload(BanUser, jsoncodec.dumps({**body, "user_id": user_id}))
    return json_response(await send(request, "ban-user", payload.model_dump(mode="json"), token=token, mutating=True))


# -- audit -----------------------------------------------------------------------------------

AUDITED_SERVICES = ("auth", "users", "posts")


async def list_audit(request: web.Request) -> web.Response:
    """An admin reads one service's authorization decisions; the service itself checks the role."""
    token = await authenticate(request)
    service = request.query.get("service")
    if service not in AUDITED_SERVICES:
        raise Unprocessable(f"service: must be one of {', '.join(AUDITED_SERVICES)}")
    query: dict[str, Any] = {k: request.query[k] for k in ("decision", "cursor") if k in request.query}
    if "limit" in request.query:
        try:
            query["limit"] = int(request.query["limit"])
        except ValueError:
            raise Unprocessable("limit: must be a whole number from 1 to 100") from None
    payload = payload_from_mapping(ListAudit, query).model_dump(mode="json")
    return json_response(await send(request, audit_command_name(service), payload, token=token))


# -- platform --------------------------------------------------------------------------------

async def jwks(request: web.Request) -> web.Response:
    """auth_service's JWKS, passed through so clients need only the gateway's address."""
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with request.app[HTTP].get(request.app[SETTINGS].auth_jwks_url, timeout=timeout) as upstream:
            upstream.raise_for_status()
            document = await upstream.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise ServiceUnavailable("The key set is unavailable right now", retry_after=5) from None
    return json_response(document, headers={"Cache-Control": "public, max-age=300"})


async def index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")
