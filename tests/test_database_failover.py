"""A PostgreSQL primary lost under load and its synchronous standby promoted: the services find the
new primary by themselves, every acknowledged post is on it, nothing ran twice, clients see only
503/504 during the switch, and the stack serves again within a bounded time.

The stack runs on a primary and standby of the test's own (tests/support/standby.py), with
`DATABASE_URL` naming both hosts and `target_session_attrs=read-write`. Eight clients create posts
through the gateway back to back, each with its own Idempotency-Key, retrying 503/504 with the same
key as a well-behaved client does. The primary is stopped with `-m immediate` (no checkpoint, every
connection cut), left down for a moment in which nothing takes writes, and the standby is promoted.
The second test gives the services one endpoint instead (a TCP proxy standing for a managed
database's DNS name) and moves it to the standby before the promotion: the writes that land there
fail with read_only_sql_transaction and must be held like an outage, never answered 500.

It needs root and Debian's postgresql-common; without them it is skipped, saying what is missing,
unless REQUIRE_POSTGRESQL_STANDBY is set (CI sets it), where that is a failure.

What this maps to in production (OPERATIONS.md): a managed PostgreSQL with a synchronous standby
failing over, the services given the host list (or one endpoint that the provider moves).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.accounts import User, register
from tests.support.backends import provisioned
from tests.support.faults import DATABASE_FAILOVER, FaultWatch
from tests.support.proxy import CuttableProxy
from tests.support.stack import Stack, side_stack
from tests.support.standby import ReplicatedPair, missing_tools, replicated_pair

pytestmark = pytest.mark.fault

MISSING = missing_tools()
if MISSING is not None:
    if os.environ.get("REQUIRE_POSTGRESQL_STANDBY"):  # CI sets it: there, a skip would hide the test
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING, allow_module_level=True)

CLIENTS = 8
#: Load before the fault, and how long the primary stays down before the standby is promoted.
STEADY_SECONDS = 2.0
GAP_SECONDS = 1.5
#: From the promotion, how long the stack may take to acknowledge writes again.
RECOVERY_BOUND_SECONDS = 15.0
#: A short RPC timeout, so that commands held through the switch show up as 504s and are retried:
#: shorter than the outage (the gap, plus the held commands' backoff, which retries 1.4 s and then
#: 3 s after their first failure), so that it cannot race the first retry that succeeds.
RPC_TIMEOUT_SECONDS = "2"


@dataclass
class Load:
    """What the clients sent and were told."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> post id
    statuses: dict[str, int] = field(default_factory=dict)
    #: When each acknowledgement came (monotonic), to time the recovery.
    acknowledged_at: list[float] = field(default_factory=list)
    keys_sent: list[str] = field(default_factory=list)


async def client(http: aiohttp.ClientSession, user: User, load: Load, faults: FaultWatch, done: asyncio.Event) -> None:
    while not done.is_set():
        key = f"failover-{uuid4()}"
        load.keys_sent.append(key)
        deadline = time.monotonic() + 60
        while True:
            try:
                async with http.post("/posts", json={"title": key, "body": "b"}, headers={**user.auth, "Idempotency-Key": key}) as response:
                    faults.saw(response.status, "POST /posts")
                    load.statuses[str(response.status)] = load.statuses.get(str(response.status), 0) + 1
                    if response.status == 201:
                        load.acknowledged[key] = str((await response.json())["id"])
                        load.acknowledged_at.append(time.monotonic())
                        break
                    assert response.status in (503, 504), await response.text()
            except aiohttp.ClientError:
                load.statuses["connection error"] = load.statuses.get("connection error", 0) + 1
            assert time.monotonic() < deadline, f"{key} never landed: {load.statuses}"
            await asyncio.sleep(0.2)


async def test_services_follow_a_promoted_standby(tmp_path: Path) -> None:
    """DATABASE_URL names both hosts: new connections skip the dead primary and the standby still
    in recovery, and take the standby once it is promoted."""
    with replicated_pair() as pair:
        async with provisioned(pair.url()) as backends:
            settings = {"RPC_TIMEOUT_SECONDS": RPC_TIMEOUT_SECONDS}
            async with side_stack(backends, tmp_path, settings, Ed25519PrivateKey.generate()) as stack:
                await _fail_over_under_load(stack, pair, _database(backends.database_url))


async def test_writes_that_reach_a_standby_are_held_until_it_is_promoted(tmp_path: Path) -> None:
    """DATABASE_URL names one endpoint (a managed database's DNS name), which moves to the standby
    before it is promoted: every write there fails with read_only_sql_transaction, which the
    services wait out like an outage (never a 500) until the promotion."""
    with replicated_pair() as pair:
        async with provisioned(pair.url()) as backends:
            database = _database(backends.database_url)
            endpoint = CuttableProxy("127.0.0.1", pair.primary_port)
            await endpoint.start()
            try:
                settings = {
                    "RPC_TIMEOUT_SECONDS": RPC_TIMEOUT_SECONDS,
                    "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{endpoint.port}/{database}",
                }
                async with side_stack(backends, tmp_path, settings, Ed25519PrivateKey.generate()) as stack:

                    async def move_endpoint() -> None:
                        endpoint.target = ("127.0.0.1", pair.standby_port)
                        await endpoint.cut()  # every connection drops, as when a DNS name moves and the old host goes
                        await endpoint.restore()

                    try:
                        await _fail_over_under_load(stack, pair, database, early=move_endpoint)
                    finally:
                        # Off the event loop: the endpoint runs on it, and the services' shutdown
                        # (in-flight commands, the outbox flush) needs it to reach the database.
                        await asyncio.to_thread(stack.stop_all)
                    held = [
                        line
                        for path in stack.log_dir.glob("*.log")
                        for line in path.read_text().splitlines()
                        if "read-only transaction" in line
                    ]
            finally:
                await endpoint.cut()
    assert held, "no write reached the standby before its promotion: the test did not test that"


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


async def _fail_over_under_load(
    stack: Stack, pair: ReplicatedPair, database: str, *, early: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Steady load, then (`early`, and a moment of it) the primary stopped, a gap, the standby
    promoted, load again; then the checks on the new primary."""
    faults = FaultWatch(stack.log_dir)
    faults.expect(*DATABASE_FAILOVER)
    load = Load()
    done = asyncio.Event()
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as http:
        user = await register(http, "failover")
        clients = [asyncio.create_task(client(http, user, load, faults, done)) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(STEADY_SECONDS)
            if early is not None:
                await early()
                await asyncio.sleep(GAP_SECONDS)
            await asyncio.to_thread(pair.stop_primary)
            stopped = time.monotonic()
            before = len(load.acknowledged)
            await asyncio.sleep(GAP_SECONDS)
            during_gap = len(load.acknowledged) - before
            # No host takes writes: the services say they cannot work, whatever answers.
            not_ready = await _readiness(stack)
            await asyncio.to_thread(pair.promote)
            promoted = time.monotonic()
            while not any(at > promoted for at in load.acknowledged_at):
                assert time.monotonic() - promoted < RECOVERY_BOUND_SECONDS, (
                    f"no write acknowledged within {RECOVERY_BOUND_SECONDS} s of the promotion: {load.statuses}\n"
                    + "\n".join(f"--- {name}\n{stack.logs(name)}" for name in stack.processes)
                )
                await asyncio.sleep(0.05)
            recovered = min(at for at in load.acknowledged_at if at > promoted) - promoted
            await asyncio.sleep(2)  # steady load on the new primary
        finally:
            done.set()
            outcome = await asyncio.gather(*clients, return_exceptions=True)
        failures = [error for error in outcome if isinstance(error, BaseException)]
        assert not failures, failures
        # Public reads run on the read-only pool, which must have found the new primary too.
        async with http.get("/posts", params={"limit": "1"}) as response:
            faults.saw(response.status, "GET /posts")
            assert response.status == 200, await response.text()

    new_primary = await asyncpg.connect(pair.standby_url(database))
    try:
        assert await new_primary.fetchval("SELECT NOT pg_is_in_recovery()"), "the standby was not promoted"
        # The services found it by themselves: their pools are connected to it.
        connected = {
            row["application_name"]
            for row in await new_primary.fetch("SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = $1", database)
        }
        posts = await new_primary.fetch("SELECT id::text, title FROM posts.posts WHERE author_id = $1", user.id)
        records = await new_primary.fetch(
            "SELECT message_id, reply->>'id' AS post_id FROM posts.processed_commands WHERE subject = $1", user.id
        )
        pending_events = await _outbox_drained(new_primary)
    finally:
        await new_primary.close()

    by_title: dict[str, list[str]] = {}
    for row in posts:
        by_title.setdefault(row["title"], []).append(row["id"])
    twice = {title: ids for title, ids in by_title.items() if len(ids) > 1}
    lost = {key: post for key, post in load.acknowledged.items() if by_title.get(key) != [post]}
    recorded = {row["message_id"]: row["post_id"] for row in records}
    print(
        f"\npostgresql failover: {len(load.keys_sent)} creates by {CLIENTS} clients, {len(load.acknowledged)} acknowledged "
        f"({before} until the primary was down, {during_gap} in the {GAP_SECONDS} s without one); responses {load.statuses}; "
        f"first write acknowledged {recovered:.1f} s after the promotion ({promoted - stopped:.1f} s after the stop); "
        f"posts {len(posts)}, run twice {len(twice)}, acknowledged but missing {len(lost)}; outbox left {pending_events}"
    )
    assert before > 0, "no steady load before the fault"
    assert all(status == 503 for status in not_ready.values()), f"/readyz with no primary: {not_ready}"
    assert load.statuses.get("504", 0) + load.statuses.get("503", 0) > 0, f"the load did not run through the switch: {load.statuses}"
    assert {"auth_service", "users_service", "posts_service"} <= connected, f"services on the new primary: {connected}"
    assert not lost, f"acknowledged posts missing from the new primary: {list(lost.items())[:5]}"
    assert not twice, f"commands that ran twice: {list(twice.items())[:5]}"
    assert all(recorded.get(key) == post for key, post in load.acknowledged.items()), "a stored reply differs from the answer"
    # Every key a client gave up on is impossible (each retried until it landed): all were acknowledged.
    assert set(load.keys_sent) == set(load.acknowledged)
    assert pending_events == 0, "the relay left committed events in the outbox"
    await stack.wait_ready("gateway", timeout=10)
    faults.check()


async def _readiness(stack: Stack) -> dict[str, int]:
    """Each service's /readyz status."""
    async with aiohttp.ClientSession() as http:
        answers = {}
        for service in ("auth", "users", "posts"):
            async with http.get(stack.http_url(service) + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as response:
                answers[service] = response.status
    return answers


async def _outbox_drained(conn: asyncpg.Connection, timeout: float = 10) -> int:
    """Events still waiting in the posts outbox once the relay has had `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pending = int(await conn.fetchval("SELECT count(*) FROM posts.outbox"))
        if pending == 0 or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.2)
