"""Password hashing cannot be starved, nor used to starve (issue 11, part 3).

The finding: 60 concurrent registrations from one address kept auth_service's two hashing threads
busy, and a correct login behind them waited 10 s for a 504. Now logins go before registrations
for the hashing threads (one thread is theirs alone), a registration that cannot be hashed soon is
a fast 503 with Retry-After, and registration is rate limited per address and globally (429 with
Retry-After), in PostgreSQL so every auth_service instance shares the count.

The session stack's limits are high (every test client is 127.0.0.1 and the suite registers
hundreds of users); the limits themselves are shown on a stack of their own with low ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.handlers import TOO_MANY_FROM_ADDRESS, TOO_MANY_OVERALL, registration_address
from tests.support.accounts import User
from tests.support.backends import provisioned
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack, side_stack

FLOOD = 60
#: Floods tried before the sub-second login must have been seen (see the test's docstring).
ROUNDS = 5
#: What the issue asks of a correct login while the flood pours in.
LOGIN_WITHIN_SECONDS = 1.0
#: "Fast": inside the gateway's 10 s reply timeout, which is what used to answer (a 504). A busy
#: registration may wait 2 s for a hashing thread, after its turn in a queue the flood filled.
FAST_SECONDS = 8.0


def fresh_email(name: str = "flood") -> str:
    return f"{name}-{uuid4().hex[:12]}@example.com"


async def register_over_http(http: aiohttp.ClientSession, **headers: str) -> tuple[int, float, dict[str, str], Any]:
    """Status, seconds taken, headers and body of one registration with a fresh email."""
    body = {"email": fresh_email(), "password": f"pw-{uuid4().hex}", "display_name": "Flood"}
    started = time.monotonic()
    async with http.post("/auth/register", json=body, headers=headers) as response:
        answer = await response.json(content_type=None)
        return response.status, time.monotonic() - started, dict(response.headers), answer


async def timed_login(http: aiohttp.ClientSession, user: User) -> tuple[int, float]:
    started = time.monotonic()
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        await response.read()
        return response.status, time.monotonic() - started


def assert_busy_answer(status: int, headers: dict[str, str], answer: Any) -> None:
    """A 503 for a busy hasher: problem+json, a detail that says so, and Retry-After."""
    assert status == 503, (status, answer)
    assert int(headers["Retry-After"]) >= 1, headers
    assert "busy" in answer["detail"], answer


# -- fairness and saturation (the session stack) --------------------------------------------------


async def flood_and_log_in(http: aiohttp.ClientSession, user: User) -> tuple[list[tuple[int, float, int]], list[Any]]:
    """60 registrations at once, and the user logging in, one login after another, for as long as
    any of them is unanswered: each login's status, seconds, and registrations still unanswered
    when it was answered."""
    flood = [asyncio.create_task(register_over_http(http)) for _ in range(FLOOD)]
    await asyncio.sleep(0.1)  # the registrations are on their way to auth_service before the first login
    logins: list[tuple[int, float, int]] = []
    while not all(task.done() for task in flood) and len(logins) < 10:
        status, seconds = await timed_login(http, user)
        logins.append((status, seconds, sum(not task.done() for task in flood)))
    return logins, list(await asyncio.gather(*flood))


async def test_a_correct_login_answers_within_a_second_while_60_registrations_pour_in(http: aiohttp.ClientSession, new_user: Any) -> None:
    """Before: every login waited 10 s behind the flood and got a 504. Now every login is answered
    200, and one answers within a second while registrations are still being hashed or refused.
    The machine has 2 cores and other work may load it, so the flood is tried up to ROUNDS times;
    what must never happen, in any round, is a login that fails or waits past FAST_SECONDS."""
    user: User = await new_user("patient")
    best: list[float] = []
    for _ in range(ROUNDS):
        logins, answers = await flood_and_log_in(http, user)
        print(f"\nlogins (status, seconds, registrations unanswered): {[(s, round(t, 2), n) for s, t, n in logins]}")
        print(f"registrations: { {status: [a[0] for a in answers].count(status) for status in {a[0] for a in answers}} }")
        assert logins and all(status == 200 and seconds < FAST_SECONDS for status, seconds, _ in logins), logins
        # Every registration was answered well before the gateway's timeout: created, or refused as busy.
        assert {a[0] for a in answers} <= {201, 503}, [a[0] for a in answers]
        assert max(a[1] for a in answers) < FAST_SECONDS, sorted(round(a[1], 2) for a in answers)
        for status, _, headers, answer in answers:
            if status == 503:
                assert_busy_answer(status, headers, answer)
        best.append(min([seconds for _, seconds, unanswered in logins if unanswered], default=FAST_SECONDS))
        if best[-1] < LOGIN_WITHIN_SECONDS:
            break
    assert min(best) < LOGIN_WITHIN_SECONDS, f"the best login during each flood took {best} s"


async def test_saturated_registration_hashing_is_a_fast_503_with_retry_after(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    before = await db.fetchval("SELECT count(*) FROM auth.registration_attempts")
    answers = await asyncio.gather(*(register_over_http(http) for _ in range(30)))
    statuses = [a[0] for a in answers]
    assert 503 in statuses and 201 in statuses, statuses
    assert set(statuses) <= {201, 503}, statuses
    for status, seconds, headers, answer in answers:
        assert seconds < FAST_SECONDS, (status, seconds)
        if status == 503:
            assert_busy_answer(status, headers, answer)
    # A registration refused as busy is not counted against its address.
    counted = await db.fetchval("SELECT count(*) FROM auth.registration_attempts") - before
    assert counted == statuses.count(201), (counted, statuses)


async def test_saturated_login_hashing_is_a_fast_503_with_retry_after_never_a_504(http: aiohttp.ClientSession) -> None:
    async def login_unknown() -> tuple[int, float, dict[str, str], Any]:
        body = {"email": fresh_email("nobody"), "password": "not the password"}
        started = time.monotonic()
        async with http.post("/auth/login", json=body) as response:
            return response.status, time.monotonic() - started, dict(response.headers), await response.json(content_type=None)

    answers = await asyncio.gather(*(login_unknown() for _ in range(30)))
    statuses = [a[0] for a in answers]
    assert 503 in statuses and set(statuses) <= {401, 503}, statuses
    for status, seconds, headers, answer in answers:
        assert seconds < FAST_SECONDS, (status, seconds)
        if status == 503:
            assert_busy_answer(status, headers, answer)


# -- the rate limit's table is bounded (the session stack) ----------------------------------------


async def test_a_registration_clears_expired_attempts(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    """Each registration attempt is a row (for the rate limit); each also clears rows older than
    the window, so the table holds about one window of attempts whatever an outsider sends."""
    stale = [f"198.51.100.{n}" for n in range(50)]
    await db.executemany(
        "INSERT INTO auth.registration_attempts (address, attempted_at) VALUES ($1, now() - interval '2 days')", [(a,) for a in stale]
    )
    status, _, _, answer = await register_over_http(http)
    assert status == 201, answer
    left = await db.fetchval("SELECT count(*) FROM auth.registration_attempts WHERE address = ANY($1)", stale)
    assert left == 0, f"{left} attempts older than the window are still kept"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same subscriber's block
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not an address", "not an address"),
    ],
)
def test_registrations_are_counted_per_ipv4_address_and_per_ipv6_64(address: str, key: str) -> None:
    assert registration_address(address) == key


# -- the limits (a stack of their own, with low limits) -------------------------------------------

PER_ADDRESS = 3
GLOBAL = 8


@pytest.fixture(scope="module")
async def limited(signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A second stack, on its own database and vhost, whose registration limits are low."""
    settings = {"REGISTER_MAX_PER_ADDRESS": str(PER_ADDRESS), "REGISTER_MAX_GLOBAL": str(GLOBAL), "REGISTER_WINDOW_SECONDS": "3600"}
    async with provisioned() as backends, side_stack(backends, tmp_path_factory.mktemp("limited"), settings, signing_key) as running:
        yield running


@pytest.fixture(scope="module")
async def limited_http(limited: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=limited.gateway_url) as session:
        yield session


@pytest.fixture(scope="module")
async def limited_broker(limited: Stack) -> AsyncIterator[BrokerProbe]:
    connection = await aio_pika.connect_robust(limited.env["AMQP_URL"], reconnect_interval=1)
    probe = BrokerProbe(connection, limited.env["AMQP_URL"], {"gateway": limited.env_for("gateway")["AMQP_URL"]})
    await probe.start()
    yield probe
    await connection.close()


def assert_rate_limited(status: int, headers: dict[str, str], answer: Any, detail: str) -> None:
    assert status == 429, (status, answer)
    assert 1 <= int(headers["Retry-After"]) <= 3600, headers
    assert answer["detail"] == detail, answer


async def test_registrations_beyond_the_per_address_limit_are_429_with_retry_after(limited_http: aiohttp.ClientSession) -> None:
    # Every client of this test is 127.0.0.1, the address the gateway tells auth_service.
    for _ in range(PER_ADDRESS):
        status, _, _, answer = await register_over_http(limited_http)
        assert status == 201, answer
    status, _, headers, answer = await register_over_http(limited_http)
    assert_rate_limited(status, headers, answer, TOO_MANY_FROM_ADDRESS)
    # A refused attempt does not count: the wait does not grow while the caller keeps trying.
    again = await register_over_http(limited_http)
    assert again[0] == 429 and int(again[2]["Retry-After"]) <= int(headers["Retry-After"]), again


async def test_registrations_beyond_the_global_limit_are_429_for_everyone(
    limited_http: aiohttp.ClientSession, limited_broker: BrokerProbe
) -> None:
    # Registrations from as many addresses as the gateway reports (published as the gateway, the
    # only publisher whose x-client-address is believed): no address reaches its own limit, so
    # only the global one stops them.
    created, refusal = 0, None
    for number in range(GLOBAL + 1):
        payload = {"email": fresh_email("global"), "password": f"pw-{uuid4().hex}", "display_name": "Global"}
        address = {"x-client-address": f"198.51.100.{number + 1}"}
        reply = await limited_broker.command("register", payload, headers=address, as_process="gateway")
        assert reply is not None
        if not reply["ok"]:
            refusal = reply["error"]
            break
        created += 1
    assert created >= 1, "an address over its limit must not hold back everyone else"
    assert refusal is not None and refusal["status"] == 429, refusal
    assert refusal["detail"] == TOO_MANY_OVERALL and 1 <= refusal["retry_after"] <= 3600, refusal
    status, _, headers, answer = await register_over_http(limited_http)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 3600, (status, answer)
