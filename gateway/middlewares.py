"""Gateway middlewares: request ids and the request's log line, metrics, the one table from
errors to problem+json (with RFC 6750's challenge on a 401), and the headers every answer carries."""

from __future__ import annotations

import logging
import re
import time
from uuid import uuid4

from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from gateway.keys import METRICS
from shared import logs
from shared.envelope import REQUEST_ID as SAFE_REQUEST_ID
from shared.errors import AppError
from shared.problems import problem, problem_from_error

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
#: Set once the request's bearer token has been read: a 401 after that is about that token.
TOKEN_PRESENTED = web.RequestKey("token_presented", bool)

#: aiohttp's own HTTP errors (unknown route, wrong method, body too large) as problem details.
_HTTP_DETAILS = {
    404: "There is nothing at this address",
    405: "This method is not allowed here",
    413: "The request body is too large",
}


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the client's X-Request-ID if it is sane, else make one; bind it to every log line
    written for the request and echo it back. One line per request: INFO when it failed (status
    400 and up), DEBUG otherwise, so a busy gateway does not pay for a line per success."""
    offered = request.headers.get("X-Request-ID", "")
    request_id = request[REQUEST_ID] = offered if SAFE_REQUEST_ID.fullmatch(offered) else uuid4().hex
    bound = logs.bind(request_id=request_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
        response.headers["X-Request-ID"] = request_id
        level = logging.INFO if response.status >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "request failed" if response.status >= 400 else "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
        return response
    finally:
        logs.unbind(bound)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.get(REQUEST_ID, "")
    try:
        return await handler(request)
    except AppError as exc:
        response = problem_from_error(exc, request_id=request_id)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = bearer_challenge(exc, token_presented=request.get(TOKEN_PRESENTED, False))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        response = problem(exc.status, exc.reason, detail, request_id=request_id)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in the gateway", extra={"request_id": request_id})
        return problem(500, "Internal Server Error", "Something went wrong on our side", request_id=request_id)


#: The methods a metric label may name; a client can send any token as a method, and a label taken
#: from the request would add a series per made-up method.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    # The route's pattern (`/posts/{post_id}`), never the raw path: one series per route.
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(route, method, str(status)).inc()
        # A `GET /live` stream lasts as long as its reader stays: not a latency (gateway_live_* count it).
        if route != "/live" or status != 200:
            metrics.latency.labels(route, method).observe(time.perf_counter() - started)


#: What RFC 6750 §3 lets a quoted error_description hold: printable ASCII without `"` and `\\`.
_NOT_IN_QUOTED_STRING = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def bearer_challenge(error: AppError, *, token_presented: bool) -> str:
    """The `WWW-Authenticate` of a 401 (RFC 6750 §3). Without a token (or with another scheme)
    it names the scheme only, as §3.1 asks; a token that was refused, whether here or by the
    service behind (expired, forged, revoked), is `invalid_token`, with the problem's detail."""
    if not token_presented:
        return "Bearer"
    description = _NOT_IN_QUOTED_STRING.sub("", error.detail)
    return f'Bearer error="invalid_token", error_description="{description}"'


#: The UI is the gateway's own files only: no inline script or style, nothing from elsewhere,
#: never inside a frame (so another site cannot overlay the admin's Ban button), no <base> or
#: plugin tricks, forms post only here. Strict enough for JSON too, so every answer carries it.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # a JSON answer is never run as script or styles
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",  # ids in our URLs stay ours
    # aiohttp would say "Python/3.x aiohttp/3.x": versions tell an attacker which CVEs to try.
    "Server": "gateway",
}


def hide_server_version() -> None:
    """aiohttp answers a request it cannot parse by itself, before any route, middleware or
    signal runs, with `Server: Python/3.x aiohttp/3.x`; that default is a module constant, the only
    hook aiohttp offers for it."""
    web_response.SERVER_SOFTWARE = SECURITY_HEADERS["Server"]


async def set_security_headers(_: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal, so every answer gets them: the views', the errors',
    static files' and aiohttp's own (aiohttp sets its Server header before the signal runs)."""
    response.headers.update(SECURITY_HEADERS)
