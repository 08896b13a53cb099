"""Group commit (shared/group_commit.py): commands waiting for the database share a transaction,
and each keeps its own outcome.

The first tests drive `GroupCommit` directly against the real PostgreSQL, in a schema of their
own: every unit of work writes a row with `txid_current()`, so which rows shared a transaction is
read back from the database, not taken from the code's own counters. The last ones put bursts of
commands straight onto RabbitMQ for the running posts_service, where a refusal lands in the middle
of a batch of allowed commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest

from shared.database import TRANSIENT_DATABASE_ERRORS, Connection, create_pool
from shared.errors import Forbidden
from shared.group_commit import MAX_BATCH_LIMIT, GroupCommit
from tests.support.accounts import User
from tests.support.backends import Backends
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack


@pytest.fixture
async def pools(backends: Backends) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """A pool for the work, and another to look from outside its transactions."""
    schema = f"gc_{uuid4().hex[:10]}"
    admin = await asyncpg.connect(backends.database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".rows (n int PRIMARY KEY, txid bigint NOT NULL)')
    await admin.close()
    work = await create_pool(backends.database_url, schema, max_size=4)
    outside = await create_pool(backends.database_url, schema, max_size=4)
    yield work, outside
    await outside.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await work.close()
    await outside.close()


def insert(n: int, then: Callable[[Connection], Awaitable[Any]] | None = None) -> Callable[[Connection], Awaitable[int]]:
    async def work(conn: Connection) -> int:
        await conn.execute("INSERT INTO rows (n, txid) VALUES ($1, txid_current())", n)
        if then is not None:
            await then(conn)
        return n

    return work


async def refuse(conn: Connection) -> None:
    raise Forbidden("not yours")


async def divide_by_zero(conn: Connection) -> None:
    await conn.fetchval("SELECT 1 / 0")  # aborts the transaction (or, here, the savepoint)


async def visible(outside: asyncpg.Pool, n: int) -> bool:
    return bool(await outside.fetchval("SELECT count(*) FROM rows WHERE n = $1", n))


async def test_concurrent_commands_share_transactions_and_each_keeps_its_outcome(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    commits = 0

    def committed() -> None:
        nonlocal commits
        commits += 1

    group = GroupCommit(pool, max_batch=32, writers=1, on_commit=committed)
    refused = {n for n in range(60) if n % 7 == 3}
    failing = {n for n in range(60) if n % 11 == 5} - refused
    seen_after_return: dict[int, bool] = {}

    async def one(n: int) -> Any:
        then = refuse if n in refused else divide_by_zero if n in failing else None
        try:
            result = await group.run(insert(n, then))
        except Exception as exc:
            return exc
        # The result leaves only once the commit holding the row succeeded: another connection sees it.
        seen_after_return[n] = await visible(outside, n)
        return result

    outcomes = await asyncio.gather(*(one(n) for n in range(60)))

    allowed = set(range(60)) - refused - failing
    for n, outcome in enumerate(outcomes):
        if n in refused:
            assert isinstance(outcome, Forbidden)
        elif n in failing:
            assert isinstance(outcome, asyncpg.DivisionByZeroError)
        else:
            assert outcome == n
    assert seen_after_return == {n: True for n in allowed}
    rows = await outside.fetch("SELECT n, txid FROM rows")
    assert {r["n"] for r in rows} == allowed, "a refused or failing command rolled back only its own row"
    by_transaction: dict[int, set[int]] = {}
    for r in rows:
        by_transaction.setdefault(r["txid"], set()).add(r["n"])
    assert max(len(ns) for ns in by_transaction.values()) > 1, "commands that waited shared a transaction"
    assert len(by_transaction) < len(allowed)
    assert group.stats.batches >= 1 and group.stats.batched_commands + group.stats.alone == 60
    assert commits == group.stats.batches + group.stats.alone


async def test_one_at_a_time_each_command_has_a_transaction_of_its_own(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=32, writers=2)
    for n in range(10):
        assert await group.run(insert(n)) == n
    txids = await outside.fetch("SELECT txid FROM rows")
    assert len({r["txid"] for r in txids}) == 10
    assert group.stats.alone == 10 and group.stats.batches == 0


async def test_max_batch_bounds_a_batch(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=4, writers=1)
    await asyncio.gather(*(group.run(insert(n)) for n in range(40)))
    sizes = [r["size"] for r in await outside.fetch("SELECT count(*) AS size FROM rows GROUP BY txid")]
    assert sum(sizes) == 40 and max(sizes) == 4
    with pytest.raises(ValueError):
        GroupCommit(pool, max_batch=MAX_BATCH_LIMIT + 1, writers=1)


async def test_a_connection_lost_mid_batch_commits_none_of_it_and_every_command_can_retry(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=32, writers=1)
    hold = asyncio.Event()

    async def held(conn: Connection) -> None:
        await hold.wait()

    async def lose_the_connection(conn: Connection) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    # The first command runs alone and holds the only writer, so the next six queue into one batch;
    # the fourth of them loses the batch's connection after its insert.
    first = asyncio.create_task(group.run(insert(100, held)))
    await asyncio.sleep(0.05)
    batch = [asyncio.create_task(group.run(insert(n, lose_the_connection if n == 3 else None))) for n in range(6)]
    await asyncio.sleep(0.05)
    hold.set()
    assert await first == 100
    outcomes = await asyncio.gather(*batch, return_exceptions=True)

    assert all(isinstance(o, TRANSIENT_DATABASE_ERRORS) for o in outcomes), outcomes
    assert [r["n"] for r in await outside.fetch("SELECT n FROM rows ORDER BY n")] == [100], "nothing of the batch committed"
    # What the runner does with a transient error: retry. The same group serves them all.
    assert sorted(await asyncio.gather(*(group.run(insert(n)) for n in range(6)))) == list(range(6))
    assert {r["n"] for r in await outside.fetch("SELECT n FROM rows")} == {100, *range(6)}


# -- through the running posts_service ------------------------------------------------------------


async def batch_metric(stack: Stack) -> float:
    """How many batches (of two or more commands) every posts_service process has committed."""
    total = 0.0
    async with aiohttp.ClientSession() as session:
        for url in (stack.http_url("posts"), *stack.replica_urls("posts")):
            async with session.get(f"{url}/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("command_batch_size_count"):
                        total += float(line.split()[-1])
    return total


async def test_a_refusal_inside_a_batch_changes_nothing_of_the_others(
    stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, new_user: Callable[..., Awaitable[User]]
) -> None:
    owner = await new_user("gc-owner")
    other = await new_user("gc-other")
    created = await asyncio.gather(
        *(broker.command("create-post", {"title": f"gc {i}", "body": "b"}, token=owner.token) for i in range(40))
    )
    post_ids = [reply["result"]["id"] for reply in created if reply]
    assert len(post_ids) == 40
    batches_before = await batch_metric(stack)

    # One burst: the owner deletes the even posts, a stranger tries the odd ones.
    replies = await asyncio.gather(
        *(broker.command("delete-post", {"post_id": p}, token=(owner if i % 2 == 0 else other).token) for i, p in enumerate(post_ids))
    )

    for i, reply in enumerate(replies):
        assert reply is not None
        if i % 2 == 0:
            assert reply["ok"] is True, reply
        else:
            assert reply["ok"] is False and reply["error"]["status"] == 403, reply
    left = {str(r["id"]) for r in await db.fetch("SELECT id FROM posts.posts WHERE author_id = $1", UUID(owner.id))}
    assert left == set(post_ids[1::2])
    denied = await db.fetchval(
        "SELECT count(*) FROM posts.audit_log WHERE command = 'delete-post' AND decision = 'denied' AND caller = $1",
        f"user:{other.id}",
    )
    assert denied == 20, "every refusal is audited, although its savepoint rolled back"
    assert await batch_metric(stack) > batches_before, "the burst ran in batches"
