"""Nothing accepted is lost and nothing happens twice: posts_service killed with SIGKILL and
SIGTERM in the middle of a stream of commands, and two instances sharing one queue while every
command arrives twice.

Commands go straight onto the broker (persistent, a unique message_id each, no reply_to), so the
checks depend only on what was committed and what was published: posts in the database, the
idempotency records that say which message made which post, and the events on a private queue
bound to `events` before the stream starts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.faults import KILLED_CONSUMER, FaultWatch
from tests.support.metrics import batches_committed, metric
from tests.support.stack import ROOT, Stack, free_port

pytestmark = pytest.mark.fault

PUBLISH_BATCH = 100


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class EventTap:
    """A private, exclusive queue bound to `events` before a stream starts: what the relay published."""

    queue: aio_pika.abc.AbstractQueue
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.bodies.append({"routing_key": message.routing_key, **json.loads(message.body)})

    def of(self, routing_key: str, key: str, among: set[str] | None = None) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["routing_key"] == routing_key and (among is None or b[key] in among)]


@dataclass
class Stream:
    channel: aio_pika.abc.AbstractChannel
    taps: list[EventTap] = field(default_factory=list)

    async def tap(self, *routing_keys: str) -> EventTap:
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        for key in routing_keys:
            await queue.bind("events", routing_key=key)
        tap = EventTap(queue)
        await queue.consume(tap.on_message, no_ack=True)
        self.taps.append(tap)
        return tap

    async def publish(self, messages: Iterable[tuple[str, dict[str, Any], str]], token: str) -> int:
        """Publish (command, payload, message_id) triples with confirms, pipelined in batches."""
        exchange = await self.channel.get_exchange("commands", ensure=False)
        sent = 0
        batch: list[Any] = []
        for command, payload, message_id in messages:
            batch.append(
                exchange.publish(
                    aio_pika.Message(
                        json.dumps(payload).encode(),
                        content_type="application/json",
                        message_id=message_id,
                        type=command,
                        headers={"authorization": f"Bearer {token}"},
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=command,
                    mandatory=False,
                )
            )
            if len(batch) == PUBLISH_BATCH:
                await asyncio.gather(*batch)
                sent += len(batch)
                batch = []
        await asyncio.gather(*batch)
        return sent + len(batch)


@pytest.fixture
async def stream(stack: Stack) -> AsyncIterator[Stream]:
    connection = await aio_pika.connect(stack.env["AMQP_URL"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        yield Stream(channel)
    finally:
        await connection.close()


def create_posts(count: int, label: str) -> list[tuple[str, dict[str, Any], str]]:
    return [("create-post", {"title": f"{label} {i}", "body": "fault test"}, str(uuid4())) for i in range(count)]


async def post_count(db: asyncpg.Pool, author: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", UUID(author)))


async def processed(db: asyncpg.Pool, author: str, message_ids: list[str]) -> dict[str, Any]:
    """message_id -> stored reply, for the author's processed commands among `message_ids`."""
    rows = await db.fetch(
        "SELECT message_id, reply FROM posts.processed_commands WHERE subject = $1 AND message_id = ANY($2::text[])",
        UUID(author),
        message_ids,
    )
    return {r["message_id"]: json.loads(r["reply"]) if r["reply"] is not None else None for r in rows}


async def replayed(db: asyncpg.Pool, message_ids: list[str]) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM posts.audit_log WHERE decision = 'replayed' AND message_id = ANY($1::text[])",
            message_ids,
        )
    )


async def until(check: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout} s"
        await asyncio.sleep(interval)


async def wait_created(db: asyncpg.Pool, author: str, message_ids: list[str], *, timeout: float) -> None:
    """Until every message has a processed record, then a pause to catch any late second effect."""

    async def done() -> bool:
        return len(await processed(db, author, message_ids)) >= len(message_ids)

    await until(done, timeout=timeout, interval=0.1, what=f"{len(message_ids)} commands processed")
    await asyncio.sleep(0.5)


async def check_created_once(db: asyncpg.Pool, author: str, message_ids: list[str]) -> set[str]:
    """Each message_id took effect exactly once: one processed record, one post, and no post
    without a record. Returns the post ids."""
    records = await processed(db, author, message_ids)
    posts = {str(r["id"]) for r in await db.fetch("SELECT id FROM posts.posts WHERE author_id = $1", UUID(author))}
    assert len(records) == len(message_ids), f"{len(message_ids) - len(records)} commands have no processed record"
    made = [reply["id"] for reply in records.values() if reply is not None]
    assert len(made) == len(message_ids), "a processed create-post has no stored reply"
    assert len(set(made)) == len(made), "two message_ids claim the same post"
    assert len(posts) == len(message_ids), f"{len(posts)} posts for {len(message_ids)} commands"
    assert posts == set(made), f"{len(posts - set(made))} posts without a processed record, {len(set(made) - posts)} records without a post"
    return posts


async def wait_events(tap: EventTap, routing_key: str, key: str, expected: set[str], *, timeout: float) -> None:
    async def arrived() -> bool:
        return {b[key] for b in tap.of(routing_key, key, expected)} >= expected

    try:
        await until(arrived, timeout=timeout, interval=0.1, what=f"{routing_key} events")
    except AssertionError:
        seen = {b[key] for b in tap.of(routing_key, key, expected)}
        raise AssertionError(f"{len(expected - seen)} of {len(expected)} {routing_key} events never arrived") from None
    await asyncio.sleep(0.3)  # let a duplicate that is on its way arrive before counting


def event_figures(tap: EventTap, routing_key: str, key: str, expected: set[str]) -> tuple[int, int, int]:
    """(unique event ids, deliveries, duplicate deliveries) of `routing_key` events about `expected`."""
    events = tap.of(routing_key, key, expected)
    unique = {e["event_id"] for e in events}
    return len(unique), len(events), len(events) - len(unique)


async def ensure_posts_running(stack: Stack) -> None:
    """Other modules share this stack: leave posts_service running and ready, whatever happened."""
    process = stack.processes.get("posts")
    if process is None or process.poll() is not None:
        stack.processes.pop("posts", None)
        stack.start("posts")
    await stack.wait_ready("posts")


async def command_queue_depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return int(queue.declaration_result.message_count or 0)


# -- kill -9 mid-stream ---------------------------------------------------------------------------


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(
    stack: Stack, faults: FaultWatch, stream: Stream, db: asyncpg.Pool, new_user
) -> None:
    faults.expect(*KILLED_CONSUMER)
    total = 1000
    author: User = await new_user("sigkill")
    tap = await stream.tap("post.created")
    commands = create_posts(total, "sigkill")
    message_ids = [m for _, _, m in commands]
    started = time.monotonic()
    kills: list[tuple[int, int, int]] = []  # posts: when the kill was sent, once it was dead, once back up
    batched = 0.0  # batches committed before each kill: the kills hit the batched path
    try:
        publishing = asyncio.create_task(stream.publish(commands, author.token))
        for fraction in (1 / 3, 2 / 3):
            await until(
                lambda f=fraction: _at_least(db, author.id, int(total * f)), timeout=30, interval=0.01, what=f"{fraction:.0%} of the stream"
            )
            batched += await batches_committed(stack)
            at_kill = await post_count(db, author.id)
            assert stack.stop("posts", signal.SIGKILL) == -signal.SIGKILL
            dead = await post_count(db, author.id)
            stack.start("posts")
            await stack.wait_ready("posts")
            kills.append((at_kill, dead, await post_count(db, author.id)))
        sent = await publishing
        await wait_created(db, author.id, message_ids, timeout=30)
    finally:
        await ensure_posts_running(stack)

    posts = await check_created_once(db, author.id, message_ids)
    await wait_events(tap, "post.created", "post_id", posts, timeout=20)
    unique, deliveries, duplicate_events = event_figures(tap, "post.created", "post_id", posts)
    event_posts = {e["post_id"] for e in tap.of("post.created", "post_id", posts)}
    replays = await replayed(db, message_ids)
    outbox = await db.fetchval("SELECT count(*) FROM posts.outbox")
    print(
        f"\n[kill -9] commands sent {sent}; posts at each kill (sent / dead / back up): {kills}; effects {len(posts)};"
        f" post.created events {unique} unique / {deliveries} delivered ({duplicate_events} duplicate deliveries);"
        f" redelivered commands answered from the idempotency record {replays}; outbox left {outbox};"
        f" batches committed before the kills {batched:.0f}; {time.monotonic() - started:.1f} s"
    )
    assert batched > 0, "the stream ran in shared transactions when the kills came"
    assert sent == total
    assert event_posts == posts and unique == total
    assert all(e["author_id"] == author.id for e in tap.of("post.created", "post_id", posts))


async def _at_least(db: asyncpg.Pool, author: str, count: int) -> bool:
    return await post_count(db, author) >= count


# -- SIGTERM under load ---------------------------------------------------------------------------


async def test_sigterm_under_load_exits_cleanly_and_loses_nothing(
    stack: Stack, faults: FaultWatch, stream: Stream, db: asyncpg.Pool, new_user
) -> None:
    # A clean shutdown explains no error at all.
    total = 500
    author: User = await new_user("sigterm")
    tap = await stream.tap("post.created")
    commands = create_posts(total, "sigterm")
    message_ids = [m for _, _, m in commands]
    started = time.monotonic()
    log_offset = (stack.log_dir / "posts.log").stat().st_size
    try:
        publishing = asyncio.create_task(stream.publish(commands, author.token))
        await until(lambda: _at_least(db, author.id, total // 3), timeout=30, interval=0.01, what="a third of the stream")
        at_term = await post_count(db, author.id)
        stopping = time.monotonic()
        exit_code = stack.stop("posts")  # SIGTERM, then wait (SIGKILL after 20 s)
        took = time.monotonic() - stopping
        at_exit = await post_count(db, author.id)
        left_in_queue = await command_queue_depth(stream.channel, "posts.commands")
        outbox_at_exit = await db.fetchval("SELECT count(*) FROM posts.outbox")
        stack.start("posts")
        await stack.wait_ready("posts")
        sent = await publishing
        await wait_created(db, author.id, message_ids, timeout=30)
    finally:
        await ensure_posts_running(stack)

    shutdown_log = (stack.log_dir / "posts.log").read_bytes()[log_offset:].decode(errors="replace")
    posts = await check_created_once(db, author.id, message_ids)
    await wait_events(tap, "post.created", "post_id", posts, timeout=20)
    unique, deliveries, duplicate_events = event_figures(tap, "post.created", "post_id", posts)
    replays = await replayed(db, message_ids)
    print(
        f"\n[SIGTERM] commands sent {sent}; SIGTERM at {at_term} posts, exit code {exit_code} after {took:.2f} s"
        f" with {at_exit} posts, {left_in_queue} commands left in the queue, {outbox_at_exit} events left in the outbox;"
        f" effects {len(posts)}; post.created events {unique} unique / {deliveries} delivered"
        f" ({duplicate_events} duplicate deliveries); replayed {replays}; {time.monotonic() - started:.1f} s"
    )
    assert sent == total and unique == total
    assert "shutdown deadline passed" not in shutdown_log
    assert exit_code == 0, f"posts_service exited with {exit_code} on SIGTERM:\n{shutdown_log[-3000:]}"
    assert outbox_at_exit == 0, "a graceful shutdown flushes the outbox relay before it exits"


# -- two instances, every command twice -----------------------------------------------------------


async def test_two_instances_and_duplicate_sends_take_effect_once(
    stack: Stack, faults: FaultWatch, stream: Stream, db: asyncpg.Pool, new_user
) -> None:
    # Duplicates are answered from the idempotency records: they explain no error either.
    creates, deletes = 500, 100
    author: User = await new_user("twins")
    tap = await stream.tap("post.created", "post.deleted")
    first_url = stack.http_url("posts")
    replicas = stack.replica_urls("posts")  # TEST_REPLICAS: the stack's own second posts_service consumes too
    port = free_port()
    second_url = f"http://127.0.0.1:{port}"
    log_path = stack.log_dir / "posts-second.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        second = subprocess.Popen(
            [sys.executable, "-m", "posts_service"],
            cwd=ROOT,
            env={**stack.env_for("posts"), "POSTS_HTTP_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    second_exit: int | None = None
    try:
        await until(lambda: _ready(second_url, second), timeout=30, interval=0.2, what="second posts_service ready")
        before = {
            url: {c: await metric(url, "commands_total", command=c, outcome="ok") for c in ("create-post", "delete-post")}
            for url in (first_url, second_url, *replicas)
        }
        batches_before = {url: await metric(url, "command_batch_size_count") for url in (first_url, second_url)}

        commands = create_posts(creates, "twins")
        twice = [m for m in commands for _ in range(2)]  # a sender retry: the same message_id again
        create_ids = [m for _, _, m in commands]
        sent_creates = await stream.publish(twice, author.token)
        await wait_created(db, author.id, create_ids, timeout=40)
        posts = await check_created_once(db, author.id, create_ids)

        doomed = sorted(posts)[:deletes]
        delete_commands = [("delete-post", {"post_id": p}, str(uuid4())) for p in doomed]
        delete_ids = [m for _, _, m in delete_commands]
        sent_deletes = await stream.publish([m for m in delete_commands for _ in range(2)], author.token)
        await wait_created(db, author.id, delete_ids, timeout=30)
        await wait_events(tap, "post.created", "post_id", posts, timeout=20)
        await wait_events(tap, "post.deleted", "post_id", set(doomed), timeout=20)

        after = {
            url: {c: await metric(url, "commands_total", command=c, outcome="ok") for c in ("create-post", "delete-post")}
            for url in (first_url, second_url, *replicas)
        }
        batched = {url: await metric(url, "command_batch_size_count") - batches_before[url] for url in (first_url, second_url)}
    finally:
        second.terminate()
        try:
            second_exit = second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second_exit = second.wait()
        await ensure_posts_running(stack)

    handled = {url: {c: int(after[url][c] - before[url][c]) for c in after[url]} for url in after}
    remaining = {str(r["id"]) for r in await db.fetch("SELECT id FROM posts.posts WHERE author_id = $1", UUID(author.id))}
    deleted_by_id: dict[str, set[str]] = {}
    for e in tap.of("post.deleted", "post_id", set(doomed)):
        deleted_by_id.setdefault(e["post_id"], set()).add(e["event_id"])
    created_unique, created_deliveries, _ = event_figures(tap, "post.created", "post_id", posts)
    deleted_unique, deleted_deliveries, _ = event_figures(tap, "post.deleted", "post_id", set(doomed))
    replays = await replayed(db, create_ids + delete_ids)
    delete_records = await processed(db, author.id, delete_ids)
    print(
        f"\n[two instances] create-post sent {sent_creates} ({creates} message_ids), delete-post sent {sent_deletes}"
        f" ({deletes} message_ids); posts created {len(posts)}, deleted {len(posts - remaining)}, left {len(remaining)};"
        f" post.created {created_unique} unique / {created_deliveries} delivered;"
        f" post.deleted {deleted_unique} unique / {deleted_deliveries} delivered;"
        f" answered from the idempotency record {replays};"
        f" handled by instance 1 {handled[first_url]}, instance 2 {handled[second_url]};"
        f" batches committed by instance 1 {batched[first_url]:.0f}, instance 2 {batched[second_url]:.0f};"
        f" second instance exit code {second_exit}; {time.monotonic() - started:.1f} s"
    )
    assert remaining == posts - set(doomed)
    assert len(delete_records) == deletes
    assert created_unique == creates
    assert {p: len(ids) for p, ids in deleted_by_id.items()} == {p: 1 for p in doomed}, "a delete took effect twice"
    assert replays == creates + deletes, "every second copy is answered from the idempotency record"
    for command, sent in (("create-post", sent_creates), ("delete-post", sent_deletes)):
        assert sum(by_url[command] for by_url in handled.values()) == sent
    assert handled[first_url]["create-post"] > 0 and handled[second_url]["create-post"] > 0, "both instances consume"
    assert batched[first_url] > 0 and batched[second_url] > 0, "both instances ran commands in shared transactions"
    assert second_exit == 0


async def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"the second posts_service exited with {process.returncode}"
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
