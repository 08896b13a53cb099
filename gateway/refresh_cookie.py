"""The web UI's refresh token, kept in a cookie that no script can read.

An API client gets the refresh token in the JSON of `POST /auth/login` and `POST /auth/refresh`
and sends it back in the JSON, as the contract says. A browser page asks for the cookie instead
with `Refresh-Token-Transport: cookie` on those two requests: the token then leaves the JSON and
comes back as

    Set-Cookie: __Secure-refresh_token=…; Path=/auth/refresh; Max-Age=…; HttpOnly; Secure; SameSite=Strict

so a script injected into the page (an XSS) can use the session while the page is open but can
never copy the refresh token out and keep the session alive from elsewhere. The cookie goes only
to `/auth/refresh`, where a bodiless `POST` with the same header trades it for a new pair (and a
new cookie); logout clears it, and so does a refused refresh.

Why this is no CSRF hole (SECURITY.md says it at length): SameSite=Strict keeps the cookie off
every request another site starts; the request must carry the custom header, which no form or
"simple" cross-site fetch can set without a CORS preflight that the gateway never grants; and
even a forged refresh would only rotate the token, its answer unreadable across origins.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.declarations import Command
from shared.errors import Unauthorized

#: The request header by which a page asks for the cookie (its one value).
TRANSPORT_HEADER = "Refresh-Token-Transport"
COOKIE_TRANSPORT = "cookie"
#: `__Secure-`: browsers accept the cookie only with `Secure`, so a network attacker on plain
#: HTTP cannot plant one (RFC 6265bis §4.1.3.1). `__Host-` would also pin it, but needs `Path=/`.
COOKIE = "__Secure-refresh_token"
COOKIE_PATH = "/auth/refresh"
#: Set on a request whose answer must clear the cookie (a logout, a refused refresh).
CLEAR = web.RequestKey("clear_refresh_cookie", bool)


def reads_cookie(command: Command) -> bool:
    """Whether a page's request for `command` may leave out the body: its token is in the cookie.
    (The body then counts as optional for every caller: one without the header and without a
    body is a 422 for the missing field, like any body that lacks it.)"""
    return command.http is not None and command.http.refresh_cookie == "issue" and "refresh_token" in command.payload.model_fields


def requested(request: web.Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == COOKIE_TRANSPORT


def token_from_cookie(request: web.Request) -> str:
    """The refresh token a page's bodiless `POST /auth/refresh` stands for, or 401."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise Unauthorized("No refresh token: sign in again")
    return token


def split(result: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The answer without its refresh token (it keeps the token's lifetime), and the token."""
    kept = dict(result)
    return kept, kept.pop("refresh_token")


def issue(response: web.StreamResponse, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path=COOKIE_PATH,
        max_age=max_age,
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def _deletion() -> str:
    """The Set-Cookie value that deletes the cookie: the same name, path and flags (browsers match
    a cookie by name, domain and path), empty, expired."""
    probe = web.StreamResponse()
    probe.del_cookie(COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="Strict")
    return probe.cookies[COOKIE].output(header="").lstrip()


DELETION = _deletion()


async def clear_if_asked(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` signal: a logout, or a refused refresh, clears the cookie. (The
    response's own cookies are already headers when the signal runs: this adds the header.)"""
    if request.get(CLEAR):
        response.headers.add("Set-Cookie", DELETION)
