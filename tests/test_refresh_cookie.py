"""The web UI's refresh token in an HttpOnly cookie (issue 12, part 2; gateway/refresh_cookie.py).

A request with `Refresh-Token-Transport: cookie` gets the refresh token as a `__Secure-` cookie,
HttpOnly, Secure, SameSite=Strict and scoped to `/auth/refresh`, and not in the JSON; a bodiless
refresh with the header trades the cookie for a new pair and a new cookie; the cookie is cleared
by logout and by a refused refresh. Without the header everything is as the contract says (the
token in the JSON, no cookie). The cookies are read from and sent as raw headers: aiohttp's jar
keeps no cookie of an IP address and sends no Secure cookie over plain HTTP, as it should.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from gateway.refresh_cookie import COOKIE, COOKIE_PATH, TRANSPORT_HEADER
from tests.support.accounts import User, token_claims

WEB = {TRANSPORT_HEADER: "cookie"}


def set_cookie(response: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The refresh cookie the answer sets: its value and attributes, exactly one of it."""
    headers = [h for h in response.headers.getall("Set-Cookie", []) if h.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers.getall("Set-Cookie", [])
    morsel = SimpleCookie(headers[0])[COOKIE]
    flags = {part.strip().split("=")[0].lower() for part in headers[0].split(";")[1:]}
    return morsel.value, {"path": morsel["path"], "max-age": morsel["max-age"], "samesite": morsel["samesite"], "flags": flags}


async def web_login(http: aiohttp.ClientSession, user: User) -> tuple[dict[str, Any], str, dict[str, Any]]:
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}, headers=WEB) as response:
        assert response.status == 200, await response.text()
        value, attributes = set_cookie(response)
        return await response.json(), value, attributes


async def web_refresh(http: aiohttp.ClientSession, cookie: str | None) -> aiohttp.ClientResponse:
    headers = {**WEB, **({"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {})}
    async with http.post("/auth/refresh", headers=headers) as response:
        await response.read()
        return response


async def test_a_page_gets_the_refresh_token_only_in_an_httponly_cookie(http: aiohttp.ClientSession, new_user: Any) -> None:
    user = await new_user()
    answer, value, attributes = await web_login(http, user)
    assert "refresh_token" not in answer and answer["token_type"] == "Bearer" and answer["access_token"]
    assert len(value) >= 43  # 256 bits, URL-safe base64
    assert attributes["path"] == COOKIE_PATH
    assert attributes["max-age"] == str(answer["refresh_expires_in"])
    assert attributes["samesite"] == "Strict"
    assert {"httponly", "secure"} <= attributes["flags"]


async def test_an_api_client_still_gets_the_token_in_json_and_no_cookie(http: aiohttp.ClientSession, new_user: Any) -> None:
    user = await new_user()
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        assert response.status == 200
        assert "refresh_token" in await response.json()
        assert not response.headers.getall("Set-Cookie", [])
    async with http.post("/auth/refresh", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 422  # no body and no header: the contract's JSON refresh, lacking its field


async def test_the_cookie_is_traded_for_a_new_pair_in_the_same_session(http: aiohttp.ClientSession, new_user: Any) -> None:
    user = await new_user()
    answer, cookie, _ = await web_login(http, user)
    sid = token_claims(answer["access_token"])["sid"]
    for _ in range(3):
        response = await web_refresh(http, cookie)
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        renewed, _ = set_cookie(response)
        assert renewed != cookie
        cookie = renewed
    async with http.post("/auth/refresh", headers={**WEB, "Cookie": f"{COOKIE}={cookie}"}) as response:
        body = await response.json()
        assert "refresh_token" not in body and token_claims(body["access_token"])["sid"] == sid


async def test_a_refused_refresh_and_a_logout_clear_the_cookie(http: aiohttp.ClientSession, new_user: Any) -> None:
    missing = await web_refresh(http, None)
    assert missing.status == 401
    unknown = await web_refresh(http, "x" * 43)
    assert unknown.status == 401
    for refused in (missing, unknown):
        value, attributes = set_cookie(refused)
        assert value == "" and attributes["max-age"] == "0" and attributes["path"] == COOKIE_PATH

    user = await new_user()
    answer, cookie, _ = await web_login(http, user)
    async with http.post("/auth/logout", headers={"Authorization": f"Bearer {answer['access_token']}"}) as response:
        assert response.status == 204
        value, attributes = set_cookie(response)
        assert value == "" and attributes["max-age"] == "0"
    assert (await web_refresh(http, cookie)).status == 401  # and the server forgot it too
