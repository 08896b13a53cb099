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

import asyncpg
import pytest

from shared.commands import COMMANDS
from shared.database import TRANSIENT_DATABASE_ERRORS, Connection, create_pool
from shared.errors import Forbidden
from shared.group_commit import MAX_BATCH_LIMIT, GroupCommit
from tests.support.accounts import User
from tests.support.backends import Backends
from tests.support.broker import BrokerProbe
from tests.support.metrics import batches_committed
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


def transactions(rows: list[asyncpg.Record]) -> dict[int, set[int]]:
    """The rows' `n` by the transaction that wrote them."""
    by_transaction: dict[int, set[int]] = {}
    for r in rows:
        by_transaction.setdefault(r["txid"], set()).add(r["n"])
    return by_transaction


async def hold_the_writer(group: GroupCommit, n: int = 100) -> tuple[asyncio.Event, asyncio.Task[int]]:
    """Start a command (writing `n`) that holds the group's only writer until the event is set,
    so that what is run meanwhile queues into one batch behind it."""
    hold = asyncio.Event()

    async def held(conn: Connection) -> None:
        await hold.wait()

    first = asyncio.create_task(group.run(insert(n, held)))
    await asyncio.sleep(0.05)
    return hold, first


async def test_concurrent_commands_share_transactions_and_answer_after_the_commit(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    commits = 0

    def committed() -> None:
        nonlocal commits
        commits += 1

    group = GroupCommit(pool, max_batch=32, writers=1, on_commit=committed)
    seen_after_return: dict[int, bool] = {}

    async def one(n: int) -> int:
        result = await group.run(insert(n))
        # The result leaves only once the commit holding the row succeeded: another connection sees it.
        seen_after_return[n] = await visible(outside, n)
        return result

    assert await asyncio.gather(*(one(n) for n in range(60))) == list(range(60))

    assert seen_after_return == {n: True for n in range(60)}
    by_transaction = transactions(await outside.fetch("SELECT n, txid FROM rows"))
    assert max(len(ns) for ns in by_transaction.values()) > 1, "commands that waited shared a transaction"
    assert group.stats.batches >= 1 and group.stats.batched_commands + group.stats.alone == 60
    assert commits == len(by_transaction) == group.stats.batches + group.stats.alone


async def test_a_command_failing_in_a_batch_rolls_back_only_its_own_writes(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=32, writers=1)
    runs: dict[int, int] = {}

    def counted(n: int, then: Callable[[Connection], Awaitable[Any]] | None = None) -> Callable[[Connection], Awaitable[int]]:
        async def work(conn: Connection) -> int:
            runs[n] = runs.get(n, 0) + 1
            return await insert(n, then)(conn)

        return work

    # The first command holds the only writer, so the next twelve queue into one batch, in which
    # the fifth is refused after its insert and the ninth fails in PostgreSQL (which aborts the
    # transaction, here its savepoint). A queued burst follows, to show batching goes on after.
    hold, first = await hold_the_writer(group)
    fates = {4: refuse, 8: divide_by_zero}
    tasks = [asyncio.create_task(group.run(counted(n, fates.get(n)))) for n in range(12)]
    await asyncio.sleep(0.05)
    hold.set()
    outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)

    assert outcomes[0] == 100
    for n, outcome in enumerate(outcomes[1:]):
        if n == 4:
            assert isinstance(outcome, Forbidden)
        elif n == 8:
            assert isinstance(outcome, asyncpg.DivisionByZeroError)
        else:
            assert outcome == n
    allowed = {100, *(set(range(12)) - {4, 8})}
    rows = await outside.fetch("SELECT n, txid FROM rows")
    assert {r["n"] for r in rows} == allowed, "a failing command's writes went; the others' stayed"
    # The batch went on past the refusal and the failure: each ran once, in one transaction.
    assert runs == {n: 1 for n in range(12)}
    assert len({r["txid"] for r in rows if r["n"] < 100}) == 1
    assert group.stats.batches == 1 and group.stats.batched_commands == 12

    hold, blocker = await hold_the_writer(group, 200)
    burst = [asyncio.create_task(group.run(insert(n))) for n in range(300, 310)]
    await asyncio.sleep(0.05)
    hold.set()
    await asyncio.gather(blocker, *burst)
    later = transactions(await outside.fetch("SELECT n, txid FROM rows WHERE n >= 300"))
    assert max(len(ns) for ns in later.values()) > 1, "batching goes on after a failed batch"


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

    async def lose_the_connection(conn: Connection) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    # The first command runs alone and holds the only writer, so the next six queue into one batch;
    # the fourth of them loses the batch's connection after its insert.
    hold, first = await hold_the_writer(group)
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


async def test_a_failed_commit_runs_the_batch_again_command_by_command(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    # A deferred constraint trigger runs at COMMIT: a row with n = 13 makes the COMMIT itself fail.
    await outside.execute(
        """
        CREATE FUNCTION no_thirteen() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN IF NEW.n = 13 THEN RAISE EXCEPTION 'thirteen'; END IF; RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON rows DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION no_thirteen();
        """
    )
    group = GroupCommit(pool, max_batch=32, writers=1)
    hold, first = await hold_the_writer(group)
    batch = [asyncio.create_task(group.run(insert(n))) for n in range(10, 16)]
    await asyncio.sleep(0.05)
    hold.set()
    assert await first == 100
    outcomes = await asyncio.gather(*batch, return_exceptions=True)

    # The failed COMMIT names no culprit: every command of the batch ran again alone, so the
    # others committed, each in a transaction of its own, and the one at fault failed on its own.
    assert outcomes[:3] == [10, 11, 12] and outcomes[4:] == [14, 15]
    assert isinstance(outcomes[3], asyncpg.RaiseError), outcomes
    rows = await outside.fetch("SELECT n, txid FROM rows WHERE n < 100")
    assert sorted(r["n"] for r in rows) == [10, 11, 12, 14, 15]
    assert len({r["txid"] for r in rows}) == 5
    assert group.stats.commits_failed == 1


async def test_a_command_declared_to_run_alone_never_waits_for_a_writer(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=32, writers=1)
    hold, first = await hold_the_writer(group)
    queued = [asyncio.create_task(group.run(insert(n))) for n in range(3)]
    # The only writer is busy and three commands wait for it: one declared to run alone does not.
    assert await asyncio.wait_for(group.run(insert(7), alone=True), timeout=5) == 7
    assert not any(task.done() for task in queued)
    hold.set()
    await asyncio.gather(first, *queued)
    assert await visible(outside, 7)
    assert [c.name for c in COMMANDS.values() if c.runs_alone] == ["register", "login"], "the commands that hash a password"


async def test_a_command_cancelled_while_it_waits_leaves_the_batch_to_the_others(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    pool, outside = pools
    group = GroupCommit(pool, max_batch=32, writers=1)
    hold, first = await hold_the_writer(group)
    waiting = [asyncio.create_task(group.run(insert(n))) for n in range(5)]
    await asyncio.sleep(0.05)
    waiting[2].cancel()  # a consumer stopping while its command waits for a batch
    hold.set()
    outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)

    assert isinstance(outcomes[3], asyncio.CancelledError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [100, 0, 1, 3, 4]
    assert {r["n"] for r in await outside.fetch("SELECT n FROM rows")} == {100, 0, 1, 3, 4}
    assert len({r["txid"] for r in await outside.fetch("SELECT txid FROM rows WHERE n < 100")}) == 1


# -- through the running posts_service ------------------------------------------------------------


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
    batches_before = await batches_committed(stack)

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
    assert await batches_committed(stack) > batches_before, "the burst ran in batches"
