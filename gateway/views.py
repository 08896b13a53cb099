"""The gateway's request handlers: read and check the request, send the command, shape the answer.

A command's view is built from its declaration (`command_view`): the path, query or body become
its payload, the declared policy says whether a token is needed, the binding gives the status.
Every protected view verifies the token here first (an early 401 saves a hop), then forwards the
same token in the command; the service behind verifies it again and decides. Validation uses the
same pydantic models the services use, so a bad body is a 422 without touching the broker.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
from aiohttp import web

from gateway import refresh_cookie
from gateway.conditional import Representation
from gateway.keys import BROKER, HTTP, LIVE, METRICS, READ_CACHE, SETTINGS, VERIFIER
from gateway.middlewares import REQUEST_ID, TOKEN_PRESENTED
from gateway.read_cache import CACHED_READS, read_key
from shared import jsoncodec
from shared.commands import RESOURCES, ListAudit, audit_command_name, parse_payload, payload_from_mapping
from shared.declarations import SERVICE_NAMES, Command
from shared.envelope import bounded_user_agent
from shared.errors import AppError, BadRequest, NotFound, ServiceUnavailable, Unprocessable, UnsupportedMediaType
from shared.idempotency import IDEMPOTENCY_KEY_PATTERN
from shared.tokens import bearer_token

STATIC = Path(__file__).with_name("static")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- helpers ---------------------------------------------------------------------------------


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsoncodec.dumps(data), status=status, headers=headers, content_type="application/json")


async def authenticate(request: web.Request) -> str:
    """The request's bearer token, verified (signature, alg, typ, iss, aud, exp), or 401."""
    token = bearer_token(request.headers.get("Authorization"))
    # From here a 401, ours or the service's, is about this token: RFC 6750's invalid_token.
    request[TOKEN_PRESENTED] = True
    await request.app[VERIFIER].verify(token)
    return token


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise Unprocessable("Idempotency-Key must be 1 to 200 visible ASCII characters")
    return key


async def read_json_body(request: web.Request, *, optional: bool) -> bytes | None:
    """The body's bytes, which must be labelled `application/json` (parameters such as charset
    allowed; JSON is UTF-8 whatever they say, RFC 8259 §8.1), else 415. The label is what a
    cross-site form or `text/plain` fetch cannot set without a CORS preflight, so this is also
    what keeps such "simple" requests away from login and register. A request with no body has
    nothing to label: where the body is optional None stands for it, and where it is required
    the empty bytes go on to be the 400 they always were."""
    body = await request.read()
    if not body.strip():
        return None if optional else body
    if request.content_type != "application/json":
        raise UnsupportedMediaType("The body must be JSON, sent with Content-Type: application/json")
    return body


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        raise BadRequest("The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Unprocessable("The body must be a JSON object")
    return data


async def send(request: web.Request, command: str, payload: dict[str, Any], *, token: str | None = None, mutating: bool = False) -> Any:
    client = request.app[BROKER].client
    try:
        result = await client.call(
            command,
            payload,
            token=token,
            message_id=idempotency_key(request) if mutating else None,
            request_id=request[REQUEST_ID],
            client_address=request.remote,
            client_user_agent=bounded_user_agent(request.headers.get("User-Agent")),
        )
    except AppError as exc:
        request.app[METRICS].commands.labels(command, str(exc.status)).inc()
        raise
    request.app[METRICS].commands.labels(command, "ok").inc()
    return result


# -- commands --------------------------------------------------------------------------------


def command_view(command: Command) -> Handler:
    """The view of a command with an HTTP binding: everything it does follows from the declaration."""
    http = command.http
    assert http is not None, f"{command.name} has no HTTP binding"
    if command.name in CACHED_READS:
        return public_read_view(command)
    optional_body = command.accepts_empty_body() or refresh_cookie.reads_cookie(command)

    async def view(request: web.Request) -> web.StreamResponse:
        if http.refresh_cookie == "clear":
            request[refresh_cookie.CLEAR] = True  # whatever the answer: the page is signing out
        cookie = http.refresh_cookie == "issue" and refresh_cookie.requested(request)
        token = await authenticate(request) if command.guarded else None
        try:
            payload = await read_cookie_command(request, command) if cookie else None
            if payload is None:
                payload = await read_command(request, command, optional_body=optional_body)
            result = await send(request, command.name, payload, token=token, mutating=command.takes_idempotency_key)
        except AppError as exc:
            if cookie and exc.status in (401, 403):
                request[refresh_cookie.CLEAR] = True  # the session is over: so is its cookie
            raise
        # Before the answer leaves: whoever made the change reads it next, from this gateway's cache too.
        request.app[READ_CACHE].after_write(command, payload)
        if command.result is None:
            return web.Response(status=http.status)
        headers = {"Location": http.location.format(**result)} if http.location else {}
        if http.no_store:
            headers["Cache-Control"] = "no-store"
        if not cookie:
            return json_response(result, status=http.status, headers=headers)
        answer, refresh_token = refresh_cookie.split(result)
        response = json_response(answer, status=http.status, headers=headers)
        refresh_cookie.issue(response, refresh_token, int(answer["refresh_expires_in"]))
        return response

    view.__name__ = view.__qualname__ = command.name.replace("-", "_")
    return view


def public_read_view(command: Command) -> Handler:
    """A public read: from the read cache when it holds the answer, else through the bus (and
    then kept, see gateway/read_cache.py). Either way with its ETag, and 304 to a client that
    already holds this version. It needs no token, so a token sent along changes nothing."""
    assert command.public_read and not command.guarded, f"{command.name} is not a public read"
    http = command.http
    assert http is not None
    # A read named by its path alone (get-post, get-user) finds its entry from the path's id,
    # in the form its validated payload has, and a hit skips the payload's validation.
    fields = tuple(command.payload.model_fields)
    id_field = fields[0] if len(fields) == 1 and http.path_fields == fields else None

    async def view(request: web.Request) -> web.StreamResponse:
        cache = request.app[READ_CACHE]
        if id_field is not None:
            kept = cache.get((command.name, path_id(request, id_field)))
            if kept is not None:
                return kept.answer(request)
        payload = await read_command(request, command, optional_body=False)
        key = read_key(command.name, payload)
        kept = None if key is None or id_field is not None else cache.get(key)
        if kept is not None:
            return kept.answer(request)
        if key is None:  # a later page: not kept, but still tagged
            return Representation.of(jsoncodec.dumps(await send(request, command.name, payload))).answer(request)
        fill = cache.begin(key)
        try:
            result = await send(request, command.name, payload)
        except BaseException:  # an error is never kept
            cache.abandon(fill)
            raise
        return cache.fill(fill, jsoncodec.dumps(result)).answer(request)

    view.__name__ = view.__qualname__ = command.name.replace("-", "_")
    return view


async def read_command(request: web.Request, command: Command, *, optional_body: bool) -> dict[str, Any]:
    """The command's payload from the path, then the query (GET) or the JSON body: validated by
    the same model the service validates it with, so a bad request is answered without a hop."""
    http = command.http
    assert http is not None
    model = command.payload
    path = {name: path_id(request, name) for name in http.path_fields}
    if http.method == "GET":
        query = {name: request.query[name] for name in model.model_fields if name in request.query and name not in path}
        return payload_from_mapping(model, {**query, **path}).model_dump(mode="json", exclude_unset=True)
    body_fields = [name for name in model.model_fields if name not in path]
    if not body_fields:
        return payload_from_mapping(model, path).model_dump(mode="json", exclude_unset=True)
    raw = await read_json_body(request, optional=optional_body)
    if not path:  # the body is the whole payload: validate the bytes as they came
        return parse_payload(model, b"{}" if raw is None else raw).model_dump(mode="json", exclude_unset=True)
    body = {} if raw is None else json_object(raw)
    for name in path:
        if name in body:
            raise Unprocessable(f"{name}: is not a field of this request (it is in the path)")
    return parse_payload(model, jsoncodec.dumps({**body, **path})).model_dump(mode="json", exclude_unset=True)


async def read_cookie_command(request: web.Request, command: Command) -> dict[str, Any] | None:
    """A page's bodiless `refresh` stands for the token in its cookie; anything else (a login, a
    refresh that sends its token in the body after all) is read like any request."""
    if not refresh_cookie.reads_cookie(command) or await read_json_body(request, optional=True) is not None:
        return None
    cookie = {"refresh_token": refresh_cookie.token_from_cookie(request)}
    return parse_payload(command.payload, jsoncodec.dumps(cookie)).model_dump(mode="json", exclude_unset=True)


def path_id(request: web.Request, name: str) -> str:
    """A path id; one that is not a UUID names nothing, so it is a 404 (never a 500)."""
    try:
        return str(UUID(request.match_info[name]))
    except ValueError:
        what = next((r.name for r in RESOURCES if r.id_field == name), "resource")
        raise NotFound(f"No {what} with that id") from None


# -- audit -----------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    """An admin reads one service's authorization decisions; the service itself checks the role."""
    token = await authenticate(request)
    service = request.query.get("service")
    if service not in SERVICE_NAMES:
        raise Unprocessable(f"service: must be one of {', '.join(SERVICE_NAMES)}")
    query: dict[str, Any] = {k: request.query[k] for k in ("decision", "cursor") if k in request.query}
    if "limit" in request.query:
        try:
            query["limit"] = int(request.query["limit"])
        except ValueError:
            raise Unprocessable("limit: must be a whole number from 1 to 100") from None
    payload = payload_from_mapping(ListAudit, query).model_dump(mode="json", exclude_unset=True)
    return json_response(await send(request, audit_command_name(service), payload, token=token))


# -- platform --------------------------------------------------------------------------------


async def jwks(request: web.Request) -> web.Response:
    """auth_service's JWKS, passed through so clients need only the gateway's address. Its
    Cache-Control comes along: the short max-age is how a retired key leaves every cache."""
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with request.app[HTTP].get(request.app[SETTINGS].auth_jwks_url, timeout=timeout) as upstream:
            upstream.raise_for_status()
            document = await upstream.json(content_type=None)
            cache_control = upstream.headers.get("Cache-Control", "no-cache")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise ServiceUnavailable("The key set is unavailable right now", retry_after=5) from None
    return json_response(document, headers={"Cache-Control": cache_control})


async def live(request: web.Request) -> web.StreamResponse:
    """The public events as Server-Sent Events (gateway/live.py); anyone may listen."""
    return await request.app[LIVE].serve(request, request_id=request.get(REQUEST_ID, ""))


async def index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")
