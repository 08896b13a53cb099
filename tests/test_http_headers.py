"""HTTP as browsers and proxies expect it: the contract's rules on headers, against the running stack.

- A request body must say it is `application/json` (parameters such as `charset` allowed), else
  415: a cross-site form or a `text/plain` fetch is a "simple" request that no preflight stops,
  so it must not reach login or register. A route whose body is optional may be called without one.
- A 401 carries `WWW-Authenticate: Bearer` (RFC 6750 §3), with `error="invalid_token"` where a
  token was presented and refused, whether by the gateway or by the service behind it (§3.1).
- Answers that carry a token or an account are `Cache-Control: no-store`.
- Every answer is `nosniff`, sends no referrer, cannot be framed, and names no server version; the
  UI's pages are held to a Content-Security-Policy with no inline script.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from html.parser import HTMLParser
from uuid import uuid4

import aiohttp
import pytest

from gateway.openapi import build_document
from shared import results
from shared.commands import COMMANDS
from tests.support.accounts import User
from tests.support.stack import Stack
from tests.test_http_api import create_post, expect_problem, profile_exists, registration

NOT_JSON = {
    "text/plain": "text/plain",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=x",
    "json look-alike": "application/jsonx",
    "problem+json": "application/problem+json",
}


async def post_raw(http: aiohttp.ClientSession, path: str, body: str, content_type: str | None, **headers: str) -> aiohttp.ClientResponse:
    """POST `body` as it is, with exactly the given Content-Type (or none at all)."""
    if content_type is not None:
        headers["Content-Type"] = content_type
    # skip_auto_headers: without it aiohttp would label a str body text/plain by itself.
    return await http.post(path, data=body.encode(), headers=headers, skip_auto_headers=["Content-Type"])


# -- 415 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [*NOT_JSON.values(), None], ids=[*NOT_JSON, "none"])
async def test_register_and_login_refuse_a_body_that_is_not_labelled_json(
    http: aiohttp.ClientSession, new_user, content_type: str | None
) -> None:
    """What a cross-site form or `fetch(..., {mode: "no-cors"})` can send is refused before it acts."""
    fresh = registration()
    async with await post_raw(http, "/auth/register", json.dumps(fresh), content_type) as response:
        problem = await expect_problem(response, 415)
    assert "application/json" in problem.detail
    async with http.post("/auth/login", json={"email": fresh["email"], "password": fresh["password"]}) as response:
        await expect_problem(response, 401)  # no account was made

    user: User = await new_user("simple-request")
    credentials = json.dumps({"email": user.email, "password": user.password})
    async with await post_raw(http, "/auth/login", credentials, content_type) as response:
        await expect_problem(response, 415)
        assert "access_token" not in await response.text()


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
async def test_json_with_parameters_or_in_any_case_is_json(http: aiohttp.ClientSession, content_type: str) -> None:
    async with await post_raw(http, "/auth/register", json.dumps(registration()), content_type) as response:
        assert response.status == 201, await response.text()


async def test_every_route_that_reads_a_body_refuses_other_types(http: aiohttp.ClientSession, new_user, new_admin, wait_until) -> None:
    author: User = await new_user("typed-author")
    admin: User = await new_admin()
    post = await create_post(http, author)
    await wait_until(lambda: profile_exists(http, author.id))
    cases = [
        ("POST", "/posts", {"title": "t", "body": "b"}, author),
        ("PATCH", f"/posts/{post.id}", {"title": "changed"}, author),
        ("POST", f"/users/{author.id}/ban", {"reason": "form post"}, admin),
    ]
    for method, path, body, caller in cases:
        data = json.dumps(body).encode()
        headers = {**caller.auth, "Content-Type": "text/plain"}
        async with http.request(method, path, data=data, headers=headers) as response:
            await expect_problem(response, 415)
    async with http.get(f"/posts/{post.id}") as response:
        assert (await response.json())["title"] == post.title  # the edit did not happen
    async with http.get(f"/users/{author.id}") as response:
        assert (await response.json())["banned"] is False  # nor the ban


async def test_a_route_whose_body_is_optional_may_be_called_without_one(
    http: aiohttp.ClientSession, new_user, new_admin, wait_until
) -> None:
    admin: User = await new_admin()
    target: User = await new_user("bodiless-ban")
    await wait_until(lambda: profile_exists(http, target.id))
    async with http.post(f"/users/{target.id}/ban", headers=admin.auth, skip_auto_headers=["Content-Type"]) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["banned"] is True
    async with http.post("/auth/logout", headers=admin.auth, skip_auto_headers=["Content-Type"]) as response:
        assert response.status == 204, await response.text()


def test_every_operation_with_a_body_documents_415() -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, operations in build_document()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation and "415" not in operation["responses"]
    ]
    assert not missing, f"no 415 documented for {missing}"


# -- WWW-Authenticate ------------------------------------------------------------------------


async def test_a_401_without_a_token_asks_for_a_bearer_token(http: aiohttp.ClientSession) -> None:
    for method, path, headers in [
        ("GET", "/auth/me", {}),
        ("POST", "/auth/logout", {}),
        ("GET", "/auth/me", {"Authorization": "Basic dXNlcjpwYXNz"}),  # another scheme: no error code (§3.1)
        ("GET", "/audit?service=auth", {}),
    ]:
        async with http.request(method, path, headers=headers) as response:
            await expect_problem(response, 401)
            assert response.headers.getall("WWW-Authenticate") == ["Bearer"], (path, headers)


async def test_a_401_for_wrong_credentials_asks_for_a_bearer_token_too(http: aiohttp.ClientSession) -> None:
    async with http.post("/auth/login", json={"email": f"nobody-{uuid4().hex}@example.com", "password": "wrong-password"}) as response:
        await expect_problem(response, 401)
        assert response.headers.get("WWW-Authenticate") == "Bearer"


async def test_a_refused_token_is_an_invalid_token(http: aiohttp.ClientSession, forge) -> None:
    """The gateway's own check: a malformed, expired or forged token."""
    tokens = forge.bad_tokens(str(uuid4()), str(uuid4()))
    for name in ["garbage token", "expired", "foreign key with the real kid", "alg none"]:
        token = tokens[name]
        async with http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}) as response:
            problem = await expect_problem(response, 401)
            challenge = response.headers.get("WWW-Authenticate", "")
        assert challenge.startswith("Bearer "), challenge
        assert 'error="invalid_token"' in challenge
        assert f'error_description="{problem.detail}"' in challenge


async def test_a_token_the_service_refuses_is_an_invalid_token(http: aiohttp.ClientSession, new_user, wait_until) -> None:
    """A logged-out token still verifies at the gateway; the 401 comes back from auth_service."""
    user: User = await new_user("revoked-challenge")
    async with http.post("/auth/logout", headers=user.auth) as response:
        assert response.status == 204
    async with http.get("/auth/me", headers=user.auth) as response:
        await expect_problem(response, 401)
        challenge = response.headers.get("WWW-Authenticate", "")
    assert re.fullmatch(r'Bearer error="invalid_token", error_description="[^"\\]+"', challenge), challenge


# -- Cache-Control ---------------------------------------------------------------------------


async def test_answers_with_a_token_or_an_account_are_not_stored(http: aiohttp.ClientSession) -> None:
    fresh = registration()
    async with http.post("/auth/register", json=fresh) as response:
        assert response.status == 201
        assert response.headers.get("Cache-Control") == "no-store"
    async with http.post("/auth/login", json={"email": fresh["email"], "password": fresh["password"]}) as response:
        assert response.status == 200
        assert response.headers.get("Cache-Control") == "no-store"
        token = (await response.json())["access_token"]
    async with http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        assert response.headers.get("Cache-Control") == "no-store"


def test_every_command_answering_a_token_or_an_account_is_declared_no_store() -> None:
    """The declaration carries the rule, so a new command returning an account cannot forget it."""
    private = (results.TokenResponse, results.Account)
    forgotten = [c.name for c in COMMANDS.values() if c.http and c.result in private and not c.http.no_store]
    assert not forgotten, f"{forgotten} answer a token or an account but may be cached"


# -- every answer ----------------------------------------------------------------------------

UI = ["/", "/docs", "/static/app.js", "/static/style.css"]
API = ["/posts", "/openapi.json", "/healthz", "/nowhere", "/auth/me"]


async def test_every_answer_is_nosniff_unframeable_and_sends_no_referrer(http: aiohttp.ClientSession) -> None:
    for path in UI + API:
        async with http.get(path) as response:
            headers = response.headers
            assert headers.get("X-Content-Type-Options") == "nosniff", path
            assert headers.get("X-Frame-Options") == "DENY", path
            assert headers.get("Referrer-Policy") == "no-referrer", path
            assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), path


async def test_the_ui_runs_under_a_strict_content_security_policy(http: aiohttp.ClientSession) -> None:
    for path in UI:
        async with http.get(path) as response:
            assert response.status == 200, path
            policy = dict(
                (directive.split(" ", 1) + [""])[:2]
                for directive in (d.strip() for d in response.headers["Content-Security-Policy"].split(";"))
                if directive
            )
        assert policy["default-src"] == "'self'"
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["base-uri"] == "'none'"
        assert policy["object-src"] == "'none'"
        assert "unsafe" not in " ".join(policy.values())


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.handlers += [name for name in names if name.startswith("on")]
        self._in_script = tag == "script" and "src" not in names

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:60])


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_the_pages_have_no_inline_script(http: aiohttp.ClientSession, path: str) -> None:
    """What the policy would block must not be there to block: the page would break."""
    async with http.get(path) as response:
        parser = _Scripts()
        parser.feed(await response.text())
    assert not parser.inline, f"inline script in {path}: {parser.inline}"
    assert not parser.handlers, f"inline event handlers in {path}: {parser.handlers}"


async def test_the_server_header_names_no_version(http: aiohttp.ClientSession) -> None:
    for path in ["/", "/posts", "/nowhere", "/static/app.js"]:
        async with http.get(path) as response:
            server = response.headers.get("Server", "")
        assert not re.search(r"\d|python|aiohttp", server, re.IGNORECASE), f"{path}: Server: {server}"


async def test_a_request_that_is_not_http_names_no_version_and_is_no_error(stack: Stack) -> None:
    """aiohttp answers an unparseable request itself, before any route: that answer must not name
    versions either, and the client's mistake is a warning in the log, not an ERROR a flood of
    such requests could bury real ones under."""
    parts = urllib.parse.urlsplit(stack.gateway_url)
    marker = f"bad-header-{uuid4().hex}"
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /posts HTTP/1.1\r\nHost: x\r\n{marker}\r\n\r\n".encode())  # a header line without a colon
    await writer.drain()
    answer = (await asyncio.wait_for(reader.read(), 10)).decode(errors="replace")
    writer.close()
    assert re.match(r"HTTP/1\.[01] 400 ", answer), answer
    server = re.search(r"^Server: (.*)$", answer, re.MULTILINE | re.IGNORECASE)
    assert server is not None and not re.search(r"\d|python|aiohttp", server.group(1), re.IGNORECASE), answer
    await asyncio.sleep(0.5)  # the log line is written as the connection closes
    lines = [json.loads(line) for line in stack.logs("gateway", tail=200).splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("logger") == "aiohttp.server"]
    assert refused, "the refused request was not logged at all"
    assert all(line["level"] == "warning" for line in refused), refused
