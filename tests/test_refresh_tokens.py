"""Refresh tokens with reuse detection (issue 12, part 1), as the contract's "Tokens" section states it.

`login` answers an access token and an opaque refresh token; `refresh` (bus) and `POST
/auth/refresh` (HTTP) trade a refresh token for a new pair in the same session. A refresh token is
single use: presented again more than REFRESH_REUSE_GRACE_SECONDS after its first use it is taken
for stolen, answered 401, and the whole session dies in every service within a second. Within the
grace (two tabs refreshing at once) it is answered with a new pair. Logout, ban, set-role and
revoke-token end a session's refresh tokens; so do REFRESH_TOKEN_TTL_SECONDS unused and
SESSION_MAX_AGE_SECONDS of session age; a banned account's refresh is 403. The login limit per
address covers refresh.

The session stack runs the contract's defaults (grace 5 s, 14 days, 30 days). What needs other
settings (no grace, short lifetimes, a low per-address limit) runs on one stack of its own, since
each stack costs time and database connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.results import TokenResponse
from tests.support.accounts import User, register, token_claims
from tests.support.backends import Backends, provisioned
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack, side_stack
from tests.test_revocation import refused_everywhere, status, statuses

PROBLEM_JSON = "application/problem+json"


async def login_pair(http: aiohttp.ClientSession, user: User) -> TokenResponse:
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        assert response.status == 200, await response.text()
        return TokenResponse.model_validate(await response.json())


async def refresh_over_http(http: aiohttp.ClientSession, refresh_token: str) -> tuple[int, dict[str, str], Any]:
    async with http.post("/auth/refresh", json={"refresh_token": refresh_token}) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


def pair_of(status_code: int, answer: Any) -> TokenResponse:
    assert status_code == 200, answer
    return TokenResponse.model_validate(answer)


async def refreshed(http: aiohttp.ClientSession, refresh_token: str) -> TokenResponse:
    """The new pair for a refresh token that must be good."""
    code, _, answer = await refresh_over_http(http, refresh_token)
    return pair_of(code, answer)


def assert_problem(status_code: int, headers: dict[str, str], answer: Any, expected: int) -> None:
    assert status_code == expected, answer
    assert headers.get("Content-Type", "").startswith(PROBLEM_JSON), headers
    assert answer["status"] == expected and answer["detail"].strip(), answer
    if expected == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers


def sid(token: str) -> str:
    return str(token_claims(token)["sid"])


# -- login and a plain refresh --------------------------------------------------------------------


async def test_login_answers_an_opaque_refresh_token_kept_only_as_a_hash(http, db, new_user) -> None:
    user: User = await new_user()
    pair = await login_pair(http, user)
    assert pair.token_type == "Bearer" and pair.expires_in == 900
    assert pair.refresh_expires_in == 1_209_600  # REFRESH_TOKEN_TTL_SECONDS' default
    # Opaque: no JWT (no dots), 256 bits of URL-safe base64.
    assert "." not in pair.refresh_token and len(pair.refresh_token) >= 43, pair.refresh_token
    assert pair.refresh_token != pair.access_token

    rows = await db.fetch("SELECT * FROM auth.refresh_tokens WHERE session_id = $1::uuid", sid(pair.access_token))
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(pair.refresh_token.encode()).digest()
    # The token itself is in no column of the table.
    table = await db.fetchval("SELECT string_agg(t::text, ' ') FROM auth.refresh_tokens t")
    assert pair.refresh_token not in table


async def test_refresh_gives_a_new_pair_in_the_same_session_no_store(http, broker, new_user) -> None:
    user: User = await new_user()
    first = await login_pair(http, user)
    async with http.post("/auth/refresh", json={"refresh_token": first.refresh_token}) as response:
        assert response.status == 200, await response.text()
        assert response.headers.get("Cache-Control") == "no-store"
        second = TokenResponse.model_validate(await response.json())
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    assert sid(second.access_token) == sid(first.access_token)
    assert token_claims(second.access_token)["jti"] != token_claims(first.access_token)["jti"]
    assert await statuses(broker, second.access_token) == {"auth": "ok", "posts": "ok", "users": 403}

    # And again with the new one: a chain of refreshes stays in the one session.
    third = await refreshed(http, second.refresh_token)
    assert sid(third.access_token) == sid(first.access_token)


async def test_unknown_and_garbage_refresh_tokens_are_401(http) -> None:
    for token in ("x", "not-a-token-" + uuid4().hex, "a" * 512, "eyJhbGciOiJFZERTQSJ9.e30.sig"):
        code, headers, answer = await refresh_over_http(http, token)
        assert_problem(code, headers, answer, 401)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"refresh_token": ""},
        {"refresh_token": 5},
        {"refresh_token": None},
        {"refresh_token": "a\u0000b"},
        {"refresh_token": "x", "sub": "y"},
        [],
    ],
    ids=["empty", "blank", "number", "null", "nul", "extra-field", "array"],
)
async def test_a_malformed_body_is_422(http, body: Any) -> None:
    async with http.post("/auth/refresh", json=body) as response:
        assert response.status == 422, await response.text()
        assert response.content_type == PROBLEM_JSON


async def test_a_body_that_is_not_json_is_400(http) -> None:
    async with http.post("/auth/refresh", data=b"{not json", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400, await response.text()


# -- reuse ----------------------------------------------------------------------------------------


async def test_reuse_after_the_grace_is_401_and_ends_the_session_everywhere(http, broker, db, new_user, wait_until) -> None:
    user: User = await new_user()
    first = await login_pair(http, user)
    second = await refreshed(http, first.refresh_token)
    # Another live refresh token of the session, and an access token of each generation.
    third = await refreshed(http, second.refresh_token)
    # The first use is moved back past the grace (5 s on this stack) instead of waiting it out.
    await db.execute(
        "UPDATE auth.refresh_tokens SET used_at = used_at - interval '6 seconds' WHERE token_hash = $1",
        hashlib.sha256(first.refresh_token.encode()).digest(),
    )

    code, headers, answer = await refresh_over_http(http, first.refresh_token)
    assert_problem(code, headers, answer, 401)
    assert "already used" in answer["detail"]
    for access in (first.access_token, second.access_token, third.access_token):
        await refused_everywhere(broker, wait_until, access, 401)
    # The session's other refresh token is dead too, and no new token of it is reuse any more.
    code, headers, answer = await refresh_over_http(http, third.refresh_token)
    assert_problem(code, headers, answer, 401)
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM auth.sessions WHERE id = $1::uuid", sid(first.access_token))
    # The user can sign in again: a new session.
    fresh = await login_pair(http, user)
    assert sid(fresh.access_token) != sid(first.access_token)


async def test_two_tabs_refreshing_at_once_both_stay_signed_in(http, broker, new_user) -> None:
    """Within the grace the same refresh token answered twice (two tabs) is not theft."""
    user: User = await new_user()
    first = await login_pair(http, user)
    answers = await asyncio.gather(*(refresh_over_http(http, first.refresh_token) for _ in range(2)))
    pairs = [pair_of(code, answer) for code, _, answer in answers]
    assert {sid(p.access_token) for p in pairs} == {sid(first.access_token)}
    for pair in pairs:
        assert await statuses(broker, pair.access_token) == {"auth": "ok", "posts": "ok", "users": 403}
    # Each tab goes on with its own new refresh token.
    for pair in pairs:
        again = await refreshed(http, pair.refresh_token)
        assert sid(again.access_token) == sid(first.access_token)


# -- over the broker ------------------------------------------------------------------------------


async def test_refresh_over_the_broker_is_public_and_never_replayed(http, broker, new_user) -> None:
    user: User = await new_user()
    first = await login_pair(http, user)
    message_id = str(uuid4())
    reply = await broker.command("refresh", {"refresh_token": first.refresh_token}, message_id=message_id)
    assert status(reply) == "ok", reply
    assert reply is not None
    second = TokenResponse.model_validate(reply["result"])
    assert sid(second.access_token) == sid(first.access_token)
    # The same message again runs again: a second use within the grace gets a new pair of its
    # own, never the stored first reply.
    again = await broker.command("refresh", {"refresh_token": first.refresh_token}, message_id=message_id)
    assert status(again) == "ok", again
    assert again is not None
    assert again["result"]["refresh_token"] != second.refresh_token
    assert again["result"]["access_token"] != second.access_token
    unknown = await broker.command("refresh", {"refresh_token": "nothing-" + uuid4().hex})
    assert status(unknown) == 401
    malformed = await broker.command("refresh", {"token": first.refresh_token})
    assert status(malformed) == 422


async def test_login_over_the_broker_with_a_repeated_message_id_is_a_new_session(broker, new_user) -> None:
    user: User = await new_user()
    message_id = str(uuid4())
    replies = [await broker.command("login", {"email": user.email, "password": user.password}, message_id=message_id) for _ in range(2)]
    results = [r["result"] for r in replies if r is not None and r["ok"]]
    assert len(results) == 2, replies
    assert results[0]["refresh_token"] != results[1]["refresh_token"]
    assert sid(results[0]["access_token"]) != sid(results[1]["access_token"])


# -- what ends a session's refresh tokens ---------------------------------------------------------


async def test_logout_ends_the_refresh_token(http, new_user) -> None:
    user: User = await new_user()
    pair = await login_pair(http, user)
    async with http.post("/auth/logout", headers={"Authorization": f"Bearer {pair.access_token}"}) as response:
        assert response.status == 204
    code, headers, answer = await refresh_over_http(http, pair.refresh_token)
    assert_problem(code, headers, answer, 401)


@pytest.mark.parametrize("by", ["sid", "first jti", "refreshed jti"])
async def test_revoke_token_ends_the_refresh_token(http, stack, new_user, by: str) -> None:
    user: User = await new_user()
    first = await login_pair(http, user)
    second = await refreshed(http, first.refresh_token)
    target = {
        "sid": sid(first.access_token),
        "first jti": token_claims(first.access_token)["jti"],
        "refreshed jti": token_claims(second.access_token)["jti"],
    }[by]
    result = await asyncio.to_thread(stack.run_cli, "revoke-token", target)
    assert result.returncode == 0, result.stderr
    code, headers, answer = await refresh_over_http(http, second.refresh_token)
    assert_problem(code, headers, answer, 401)


async def test_set_role_ends_the_refresh_token_even_after_its_access_token_expired(http, db, stack, new_user) -> None:
    user: User = await new_user()
    pair = await login_pair(http, user)
    # The access token has run out; the session can still be refreshed, so set-role must end it.
    await db.execute("UPDATE auth.sessions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid", sid(pair.access_token))
    result = await asyncio.to_thread(stack.run_cli, "set-role", user.email, "admin")
    assert result.returncode == 0, result.stderr
    # Two: the session register() opened, and this one, whose access token has expired.
    assert "2 session(s) revoked" in result.stdout, result.stdout
    code, headers, answer = await refresh_over_http(http, pair.refresh_token)
    assert_problem(code, headers, answer, 401)


async def test_a_banned_accounts_refresh_is_403(http, broker, db, new_user, new_admin, wait_until) -> None:
    moderator = await new_admin()
    victim: User = await new_user()
    pair = await login_pair(http, victim)
    async with http.post(f"/users/{victim.id}/ban", json={"reason": "spam"}, headers=moderator.auth) as response:
        assert response.status == 200, await response.text()

    async def banned_in_auth() -> bool:
        return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM auth.banned_accounts WHERE user_id = $1::uuid)", victim.id))

    await wait_until(banned_in_auth, timeout=1.0)
    code, headers, answer = await refresh_over_http(http, pair.refresh_token)
    assert_problem(code, headers, answer, 403)
    assert status(await broker.command("refresh", {"refresh_token": pair.refresh_token})) == 403
    # The ban closed the session, so its refresh tokens could do nothing even without the check.
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM auth.sessions WHERE id = $1::uuid", sid(pair.access_token))


# -- a stack of its own: no grace, short lifetimes, a low per-address limit --------------------

IDLE_SECONDS = 4
MAX_AGE_SECONDS = 8
PER_ADDRESS = 4


@pytest.fixture(scope="module")
async def strict_backends() -> AsyncIterator[Backends]:
    async with provisioned() as backends:
        yield backends


@pytest.fixture(scope="module")
async def strict(
    strict_backends: Backends, signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """A second stack, on its own database and vhost: strict reuse detection (grace 0), refresh
    tokens that die after 4 s unused, sessions that die at 8 s, and 4 failures per address."""
    settings = {
        "REFRESH_REUSE_GRACE_SECONDS": "0",
        "REFRESH_TOKEN_TTL_SECONDS": str(IDLE_SECONDS),
        "SESSION_MAX_AGE_SECONDS": str(MAX_AGE_SECONDS),
        "LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
    }
    async with side_stack(strict_backends, tmp_path_factory.mktemp("strict"), settings, signing_key) as running:
        yield running


@pytest.fixture(scope="module")
async def strict_http(strict: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=strict.gateway_url) as session:
        yield session


@pytest.fixture(scope="module")
async def strict_broker(strict: Stack, strict_backends: Backends) -> AsyncIterator[BrokerProbe]:
    connection = await aio_pika.connect_robust(strict_backends.amqp_url, reconnect_interval=1)
    probe = BrokerProbe(connection, strict_backends.amqp_url, strict_backends.broker_users.urls)
    await probe.start()
    yield probe
    await probe.close()
    await connection.close()


#: Addresses handed out so far: each is used once, so no test's failures count against another's.
_ADDRESSES = itertools.count(1)


def an_address() -> dict[str, str]:
    """A client address of its own for each test, so the strict stack's low limit counts each apart."""
    return {"x-client-address": f"198.51.100.{next(_ADDRESSES)}"}


async def broker_refresh(broker: BrokerProbe, token: str, address: dict[str, str]) -> dict[str, Any]:
    # As the gateway: the only publisher whose x-client-address a service believes.
    reply = await broker.command("refresh", {"refresh_token": token}, headers=address, as_process="gateway")
    assert reply is not None
    return reply


async def strict_pair(http: aiohttp.ClientSession) -> tuple[User, TokenResponse]:
    user = await register(http)
    return user, await login_pair(http, user)


async def test_strict_a_second_use_at_once_is_reuse(strict_http, strict_broker, wait_until) -> None:
    _, first = await strict_pair(strict_http)
    address = an_address()
    second = await broker_refresh(strict_broker, first.refresh_token, address)
    assert status(second) == "ok", second
    reused = await broker_refresh(strict_broker, first.refresh_token, address)
    assert status(reused) == 401, reused
    await refused_everywhere(strict_broker, wait_until, second["result"]["access_token"], 401)
    assert status(await broker_refresh(strict_broker, second["result"]["refresh_token"], address)) == 401


async def test_strict_two_refreshes_at_once_are_one_use_and_one_reuse(strict_http, strict_broker, wait_until) -> None:
    """Without a grace, the two-tab race is theft: the token's row lock orders the two, the first
    gets a pair, the second ends the session, the first's new pair included."""
    _, first = await strict_pair(strict_http)
    address = an_address()
    replies = await asyncio.gather(*(broker_refresh(strict_broker, first.refresh_token, address) for _ in range(2)))
    assert sorted(str(status(r)) for r in replies) == ["401", "ok"], replies
    winner = next(r for r in replies if r["ok"])
    await refused_everywhere(strict_broker, wait_until, winner["result"]["access_token"], 401)
    assert status(await broker_refresh(strict_broker, winner["result"]["refresh_token"], address)) == 401


async def test_strict_an_unused_refresh_token_expires(strict_http, strict_broker) -> None:
    _, first = await strict_pair(strict_http)
    assert first.refresh_expires_in <= IDLE_SECONDS
    address = an_address()
    await asyncio.sleep(IDLE_SECONDS + 0.5)
    assert status(await broker_refresh(strict_broker, first.refresh_token, address)) == 401


async def test_strict_a_session_ends_at_its_absolute_age_however_often_refreshed(strict_http, strict_broker) -> None:
    _, pair = await strict_pair(strict_http)
    address = an_address()
    started = time.monotonic()
    token = pair.refresh_token
    # Refreshed well within the idle lifetime, again and again, until the session is 6 s old:
    # the last token's idle lifetime would reach past 8 s, its session's age does not. (The
    # clock starts after login answered, so the session is at least as old as it says.)
    while time.monotonic() - started < MAX_AGE_SECONDS - 2:
        reply = await broker_refresh(strict_broker, token, address)
        assert status(reply) == "ok", reply
        assert reply["result"]["refresh_expires_in"] <= MAX_AGE_SECONDS - (time.monotonic() - started) + 1
        token = reply["result"]["refresh_token"]
        await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, MAX_AGE_SECONDS + 0.5 - (time.monotonic() - started)))
    assert status(await broker_refresh(strict_broker, token, address)) == 401


async def test_strict_failed_refreshes_count_against_the_address_login_limit(strict_http, strict_broker) -> None:
    user, pair = await strict_pair(strict_http)
    address = an_address()
    for _ in range(PER_ADDRESS):
        assert status(await broker_refresh(strict_broker, "guess-" + uuid4().hex, address)) == 401
    limited = await broker_refresh(strict_broker, "guess-" + uuid4().hex, address)
    assert status(limited) == 429, limited
    assert limited["error"]["retry_after"] > 0
    # Even a good token is refused from that address now, and so is a login (one limit for both).
    assert status(await broker_refresh(strict_broker, pair.refresh_token, address)) == 429
    login = await strict_broker.command("login", {"email": user.email, "password": user.password}, headers=address, as_process="gateway")
    assert status(login) == 429, login
    # Another address is not limited.
    assert status(await broker_refresh(strict_broker, pair.refresh_token, an_address())) == "ok"


async def test_strict_reuse_revocation_is_in_the_database_as_well(strict, strict_http, strict_broker) -> None:
    """The reuse answer is a 401, so the command's transaction rolls back: the revocation must
    have been committed on its own."""
    _, first = await strict_pair(strict_http)
    address = an_address()
    assert status(await broker_refresh(strict_broker, first.refresh_token, address)) == "ok"
    assert status(await broker_refresh(strict_broker, first.refresh_token, address)) == 401
    conn = await asyncpg.connect(strict.env["DATABASE_URL"])
    try:
        revoked = await conn.fetchval("SELECT revoked_at IS NOT NULL FROM auth.sessions WHERE id = $1::uuid", sid(first.access_token))
        in_revoked = await conn.fetchval("SELECT count(*) FROM auth.revoked_sessions WHERE session_id = $1::uuid", sid(first.access_token))
    finally:
        await conn.close()
    assert revoked and in_revoked == 1
