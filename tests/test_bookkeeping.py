"""A command transaction's bookkeeping in two statements (shared/bookkeeping.py), the outbox
buffer the closing statement writes, the relay's batching, and the read-only pool public reads
use instead of a transaction, against the real PostgreSQL (and RabbitMQ for the relay).

Each test works in a schema of its own with the platform tables and no relay, so what the
statements wrote stays there to be read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest

from shared import audit, bookkeeping, idempotency, outbox
from shared.authorization import Resource
from shared.broker import login_user
from shared.database import create_pool
from shared.errors import Conflict, Forbidden, Unauthorized, Unprocessable
from shared.migrations import PLATFORM_MIGRATIONS, MigrationSource, migrate
from shared.roles import Role
from shared.tokens import Caller
from tests.support.backends import Backends
from tests.support.stack import Stack


@pytest.fixture
async def schema_pool(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    schema = f"bk_{uuid4().hex[:10]}"
    await migrate(backends.database_url, schema, [MigrationSource("platform", PLATFORM_MIGRATIONS)])
    pool = await create_pool(backends.database_url, schema, max_size=3)
    yield pool
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pool.close()


def a_caller() -> Caller:
    return Caller(subject=uuid4(), session_id=uuid4(), role=Role.USER, token_id="t", expires_at=int(time.time()) + 600)


def key_of(caller: Caller, message_id: str = "m-1", payload: bytes = b"payload") -> bookkeeping.Key:
    return bookkeeping.Key(caller.subject, message_id, caller.expires_at, payload)


POST_ID = str(uuid4())


def post_created() -> dict[str, str]:
    return {"post_id": str(uuid4()), "author_id": str(uuid4())}


def allowed(caller: Caller) -> audit.Decision:
    return audit.decide("allowed", "create-post", caller, None, "policy USER", message_id="m-1", request_id="r-1")


async def test_the_closing_statement_writes_reply_audit_row_and_events_in_order(schema_pool: asyncpg.Pool) -> None:
    caller = a_caller()
    key = key_of(caller)
    async with schema_pool.acquire() as conn, conn.transaction():
        with outbox.buffered(conn) as events:
            assert idempotency.is_new((await bookkeeping.open_command(conn, caller, key, "create-post")).stored)
            first = await outbox.add_event(conn, "post.created", {"post_id": POST_ID, "author_id": str(caller.subject)})
            second = await outbox.add_event(conn, "post.deleted", {"post_id": POST_ID, "by": str(caller.subject)})
            # Buffered, not written: nothing is in the outbox until the closing statement.
            assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
            await bookkeeping.close_command(conn, key, {"id": "p-1"}, allowed(caller), events.take(), notify=False)

    assert await schema_pool.fetchval("SELECT reply FROM processed_commands WHERE subject = $1 AND message_id = 'm-1'", caller.subject) == {
        "id": "p-1"
    }
    row = await schema_pool.fetchrow("SELECT decision, command, caller, reason, message_id, request_id FROM audit_log")
    assert row is not None and dict(row) == {
        "decision": "allowed",
        "command": "create-post",
        "caller": f"user:{caller.subject}",
        "reason": "policy USER",
        "message_id": "m-1",
        "request_id": "r-1",
    }
    rows = await schema_pool.fetch("SELECT event_id, routing_key, body FROM outbox ORDER BY position")
    assert [(r["event_id"], r["routing_key"]) for r in rows] == [(first, "post.created"), (second, "post.deleted")]
    assert rows[0]["body"]["post_id"] == POST_ID and UUID(rows[0]["body"]["event_id"]) == first


async def test_a_repeated_message_gets_the_stored_reply_another_command_409_another_payload_422(schema_pool: asyncpg.Pool) -> None:
    caller = a_caller()
    key = key_of(caller)
    async with schema_pool.acquire() as conn:
        async with conn.transaction():
            await bookkeeping.open_command(conn, caller, key, "create-post")
            await bookkeeping.close_command(conn, key, {"id": "p-1"}, None, [], notify=False)
        async with conn.transaction():
            assert (await bookkeeping.open_command(conn, caller, key, "create-post")).stored == {"id": "p-1"}
        with pytest.raises(Conflict):
            async with conn.transaction():
                await bookkeeping.open_command(conn, caller, key, "delete-post")
        with pytest.raises(Unprocessable, match="different payload"):
            async with conn.transaction():
                await bookkeeping.open_command(conn, caller, key_of(caller, payload=b"another"), "create-post")
        # Neither refusal touched the record: the first reply is still what a true repeat gets.
        async with conn.transaction():
            assert (await bookkeeping.open_command(conn, caller, key, "create-post")).stored == {"id": "p-1"}


async def test_a_concurrent_repeat_waits_for_the_first_and_reads_its_reply(schema_pool: asyncpg.Pool) -> None:
    """The claim blocks on the first transaction's row; once that commits, the repeat reads the
    reply in a statement of its own (the claim's snapshot is older than the commit)."""
    caller = a_caller()
    key = key_of(caller)
    async with schema_pool.acquire() as first, schema_pool.acquire() as second:
        tx = first.transaction()
        await tx.start()
        await bookkeeping.open_command(first, caller, key, "create-post")

        async def repeat() -> object:
            async with second.transaction():
                return (await bookkeeping.open_command(second, caller, key, "create-post")).stored

        waiting = asyncio.create_task(repeat())
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the repeat must wait for the first transaction"
        await bookkeeping.close_command(first, key, {"id": "p-9"}, None, [], notify=False)
        await tx.commit()
        assert await asyncio.wait_for(waiting, 5) == {"id": "p-9"}


async def test_the_opening_statement_locks_the_resource_and_reads_its_owner(schema_pool: asyncpg.Pool) -> None:
    """For an owner policy the opening statement also locks the resource's row and reads its owner
    (one round trip fewer), with a key or without; a repeat locks nothing; a missing row is None."""
    caller, owner, post = a_caller(), uuid4(), uuid4()
    resource = Resource("post", "bk", "posts", "post_id", "author_id")
    await schema_pool.execute("CREATE TABLE posts (id uuid PRIMARY KEY, author_id uuid NOT NULL)")
    await schema_pool.execute("INSERT INTO posts VALUES ($1, $2)", post, owner)
    owned = bookkeeping.Owned(resource, post)

    async def locked() -> bool:
        try:
            async with schema_pool.acquire() as other, other.transaction():
                await other.execute("SELECT 1 FROM posts WHERE id = $1 FOR UPDATE NOWAIT", post)
            return False
        except asyncpg.LockNotAvailableError:
            return True

    async with schema_pool.acquire() as conn:
        for key in (key_of(caller, "m-own"), None):
            async with conn.transaction():
                opened = await bookkeeping.open_command(conn, caller, key, "delete-post", owned)
                assert idempotency.is_new(opened.stored) and opened.owner_known and opened.owner == owner
                assert await locked()
                if key is not None:
                    await bookkeeping.close_command(conn, key, None, None, [], notify=False)
            assert not await locked()
        async with conn.transaction():
            repeat = await bookkeeping.open_command(conn, caller, key_of(caller, "m-own"), "delete-post", owned)
            assert repeat.stored is None and not repeat.owner_known and not await locked()
        async with conn.transaction():
            missing = await bookkeeping.open_command(conn, caller, None, "delete-post", bookkeeping.Owned(resource, uuid4()))
            assert missing.owner_known and missing.owner is None


@pytest.mark.parametrize(("revoked", "banned", "error"), [(True, False, Unauthorized), (False, True, Forbidden), (True, True, Forbidden)])
async def test_a_revoked_or_banned_caller_is_refused_and_claims_nothing(
    schema_pool: asyncpg.Pool, revoked: bool, banned: bool, error: type[Exception]
) -> None:
    caller = a_caller()
    if revoked:
        await schema_pool.execute("INSERT INTO revoked_sessions (session_id, user_id) VALUES ($1, $2)", caller.session_id, caller.subject)
    if banned:
        await schema_pool.execute("INSERT INTO banned_accounts (user_id) VALUES ($1)", caller.subject)
    for key in (key_of(caller), None):
        with pytest.raises(error):
            async with schema_pool.acquire() as conn, conn.transaction():
                await bookkeeping.open_command(conn, caller, key, "create-post")
    assert await schema_pool.fetchval("SELECT count(*) FROM processed_commands") == 0


async def test_events_left_in_the_buffer_roll_the_transaction_back(schema_pool: asyncpg.Pool) -> None:
    with pytest.raises(RuntimeError, match="never written"):
        async with schema_pool.acquire() as conn, conn.transaction():
            with outbox.buffered(conn):
                await conn.execute("INSERT INTO seen_events (event_id) VALUES ($1)", uuid4())
                await outbox.add_event(conn, "post.created", post_created())
    assert await schema_pool.fetchval("SELECT count(*) FROM seen_events") == 0
    assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_only_declared_events_that_fit_their_model_enter_the_outbox(schema_pool: asyncpg.Pool) -> None:
    """An undeclared event would be refused by the broker's topic permissions in production, and
    one that does not fit its model by every consumer: both fail here, inside the transaction."""
    bad = [
        ("post.pinned", post_created(), "not a declared event"),
        ("post.created", {"post_id": "p-1"}, "does not fit its model"),
    ]
    for routing_key, body, message in bad:
        with pytest.raises(outbox.UndeclaredEventError, match=message):
            async with schema_pool.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO seen_events (event_id) VALUES ($1)", uuid4())
                await outbox.add_event(conn, routing_key, body)
    with pytest.raises(outbox.UndeclaredEventError, match="not among the events this command declares"):
        async with schema_pool.acquire() as conn, conn.transaction():
            with outbox.buffered(conn, ("post.created",)) as events:
                await conn.execute("INSERT INTO seen_events (event_id) VALUES ($1)", uuid4())
                await outbox.add_event(conn, "post.created", post_created())
                await outbox.add_event(conn, "post.deleted", {"post_id": str(uuid4()), "by": str(uuid4())})
                events.take()
    assert await schema_pool.fetchval("SELECT count(*) FROM seen_events") == 0
    assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_an_event_on_another_connection_is_written_at_once_and_notifies_only_its_schema(
    schema_pool: asyncpg.Pool, backends: Backends
) -> None:
    schema = await schema_pool.fetchval("SELECT current_schema()")
    heard: dict[str, asyncio.Queue[str]] = {"own": asyncio.Queue(), "other": asyncio.Queue()}
    listener = await asyncpg.connect(backends.database_url)
    try:
        await listener.add_listener(outbox.notify_channel(schema), lambda *args: heard["own"].put_nowait(args[2]))
        await listener.add_listener(outbox.notify_channel("posts"), lambda *args: heard["other"].put_nowait(args[2]))
        async with schema_pool.acquire() as buffered_conn, schema_pool.acquire() as conn:
            with outbox.buffered(buffered_conn):
                async with conn.transaction():
                    await outbox.add_event(conn, "session.revoked", {"session_id": str(uuid4()), "user_id": str(uuid4())})
        assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 1
        assert await asyncio.wait_for(heard["own"].get(), 5) == outbox.notify_channel(schema)
        await asyncio.sleep(0.2)
        assert heard["other"].empty()
    finally:
        await listener.close()


async def test_the_pool_for_public_reads_cannot_write(schema_pool: asyncpg.Pool, backends: Backends) -> None:
    """Public reads run outside a transaction (shared/routes.py, `reads_only`); their pool's
    connections refuse every write, so a mislabelled handler fails instead of writing unguarded."""
    schema = await schema_pool.fetchval("SELECT current_schema()")
    readers = await create_pool(backends.database_url, schema, max_size=1, read_only=True)
    try:
        assert await readers.fetchval("SELECT count(*) FROM outbox") == 0
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await readers.execute("INSERT INTO seen_events (event_id) VALUES ($1)", uuid4())
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with readers.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO seen_events (event_id) VALUES ($1)", uuid4())
    finally:
        await readers.close()
    assert await schema_pool.fetchval("SELECT count(*) FROM seen_events") == 0


async def test_commits_within_the_linger_leave_in_one_batch(schema_pool: asyncpg.Pool, backends: Backends, stack: Stack) -> None:
    """A batch costs the relay three round trips whatever it carries, so after a wake-up it waits
    `linger_seconds` for the commits that follow; each event still goes out exactly once."""
    schema = await schema_pool.fetchval("SELECT current_schema()")
    connection = await aio_pika.connect(backends.amqp_url)
    relay = outbox.OutboxRelay(
        schema_pool,
        backends.database_url,
        schema,
        connection,
        user_id=login_user(backends.amqp_url),
        linger_seconds=0.3,
    )
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # its first pass found nothing; it waits for a wake-up
        for _ in range(5):
            async with schema_pool.acquire() as conn, conn.transaction():
                await outbox.add_event(conn, "post.created", post_created())
            relay.wake()
        async with asyncio.timeout(5):
            while relay.published < 5:
                await asyncio.sleep(0.05)
        assert (relay.published, relay.batches) == (5, 1)
        assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await running
        await connection.close()


async def test_an_event_the_broker_refuses_stays_in_the_outbox_and_goes_out_on_a_new_channel(
    schema_pool: asyncpg.Pool, backends: Backends, stack: Stack
) -> None:
    """A nack rolls the batch back (nothing is lost) and the relay's next pass publishes on a new
    channel: a channel can stay refused for good (RabbitMQ 3.10 did so after a quorum queue's
    leader moved). The refusal here is real: a queue bound to the events that takes none
    (`x-max-length` 0, `reject-publish`) makes the broker nack every one."""
    schema = await schema_pool.fetchval("SELECT current_schema()")
    connection = await aio_pika.connect(backends.amqp_url)
    channel = await connection.channel()
    routing_key = "post.created"
    refusing = await channel.declare_queue(exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    await refusing.bind("events", routing_key)
    watching = await channel.declare_queue(exclusive=True)
    await watching.bind("events", routing_key)
    relay = outbox.OutboxRelay(schema_pool, backends.database_url, schema, connection, user_id=login_user(backends.amqp_url))
    running = asyncio.create_task(relay.run())
    try:
        event_ids: set[str | None] = set()
        async with schema_pool.acquire() as conn, conn.transaction():
            for _ in range(2):
                event_ids.add(str(await outbox.add_event(conn, routing_key, post_created())))
        relay.wake()
        async with asyncio.timeout(5):
            while relay.renewals < 1:
                await asyncio.sleep(0.05)
        assert relay.published == 0
        assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 2, "a refused event left the outbox"

        await refusing.delete(if_unused=False, if_empty=False)
        relay.wake()
        async with asyncio.timeout(5):
            while relay.published < 2:
                await asyncio.sleep(0.05)
        assert await schema_pool.fetchval("SELECT count(*) FROM outbox") == 0
        seen: set[str | None] = set()
        async with asyncio.timeout(5):
            while seen != event_ids:
                message = await watching.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                seen.add(message.message_id)  # at least once: the refused batch was routed here too
    finally:
        await relay.stop()
        await running
        await connection.close()
