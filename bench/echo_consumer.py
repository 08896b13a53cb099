"""Baseline 2, the far side: an aio-pika consumer that sends every message's body back.

`python -m bench.echo_consumer AMQP_URL QUEUE` declares QUEUE (classic, transient: the barest
kind), takes up to 32 unacknowledged messages at once (the services' PREFETCH_COUNT default),
publishes each body to its `reply_to` with its `correlation_id`, then acks it.

`bench.floor` adds, one at a time, the parts of the path an authorized write cannot do without:

- `--database-url URL --statements N`: per message, one PostgreSQL transaction of N inserts of the
  body (BEGIN, the inserts, COMMIT) before the reply; with `--group-commit`, the messages waiting
  share transactions instead (as many in one, and as many open at once, as the services' defaults), the
  least a group commit can do: no savepoint, no failure handling;
- `--quorum`: QUEUE is a durable quorum queue, like every service's command queue (the server
  publishes persistent messages to it);
- `--events EXCHANGE`: after the reply, one persistent event per message, published with a
  confirm to the topic exchange EXCHANGE (which the server consumes), as a service's outbox relay
  publishes the event its command committed;
- `--uvloop`: run on uvloop, as the services do (the baseline itself runs on asyncio's own loop).
"""

from __future__ import annotations

import argparse
import asyncio

import aio_pika
import asyncpg
import uvloop
from aio_pika.abc import AbstractIncomingMessage

from shared.group_commit import DEFAULT_MAX_BATCH, DEFAULT_WRITERS

PREFETCH_COUNT = 32
#: `--group-commit`: messages in one transaction at most, and transactions open at once: the
#: services' defaults (GROUP_COMMIT_MAX_BATCH, GROUP_COMMIT_WRITERS).
GROUP_MAX, GROUP_WRITERS = DEFAULT_MAX_BATCH, DEFAULT_WRITERS
INSERT = "INSERT INTO bench_floor (body) VALUES ($1)"
#: The routing key of the floor's one event (the topic exchange routes it to the server's queue).
EVENT_KEY = "bench.floor.done"


async def declare_queue(channel: aio_pika.abc.AbstractChannel, name: str, *, quorum: bool) -> None:
    """The echo's queue: classic and auto-deleted, or durable quorum like a service's commands."""
    if quorum:
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    else:
        await channel.declare_queue(name, auto_delete=True)


class GroupCommit:
    """The messages waiting for the database share transactions: `statements` inserts each."""

    def __init__(self, pool: asyncpg.Pool, statements: int) -> None:
        self._pool, self._statements = pool, statements
        self._waiting: asyncio.Queue[tuple[str, asyncio.Future[None]]] = asyncio.Queue()
        self._writers = [asyncio.create_task(self._write()) for _ in range(GROUP_WRITERS)]

    async def run(self, body: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait((body, done))
        await done

    async def _write(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < GROUP_MAX and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            async with self._pool.acquire() as conn, conn.transaction():
                for body, _ in batch:
                    for _ in range(self._statements):
                        await conn.execute(INSERT, body)
            for _, done in batch:
                done.set_result(None)


async def serve(
    amqp_url: str,
    queue_name: str,
    *,
    database_url: str | None = None,
    statements: int = 0,
    group_commit: bool = False,
    quorum: bool = False,
    events: str | None = None,
) -> None:
    pool = None
    if database_url:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body text NOT NULL)")
    grouped = GroupCommit(pool, statements) if pool is not None and group_commit else None
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH_COUNT)
    await declare_queue(channel, queue_name, quorum=quorum)
    queue = await channel.get_queue(queue_name, ensure=False)
    exchange = None
    if events:
        exchange = await channel.declare_exchange(events, aio_pika.ExchangeType.TOPIC, auto_delete=True)

    async def echo(message: AbstractIncomingMessage) -> None:
        if grouped is not None:
            await grouped.run(message.body.decode())
        elif pool is not None:
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(statements):
                    await conn.execute(INSERT, message.body.decode())
        if message.reply_to:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, content_type="application/json", correlation_id=message.correlation_id),
                routing_key=message.reply_to,
            )
        await message.ack()
        if exchange is not None:
            event = aio_pika.Message(message.body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(event, routing_key=EVENT_KEY)

    await queue.consume(echo)
    await asyncio.Future()  # until the harness stops us


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_consumer", description=__doc__.split("\n\n")[0])
    parser.add_argument("amqp_url")
    parser.add_argument("queue")
    parser.add_argument("--database-url")
    parser.add_argument("--statements", type=int, default=0)
    parser.add_argument("--group-commit", action="store_true", help="waiting messages share transactions")
    parser.add_argument("--quorum", action="store_true")
    parser.add_argument("--events", help="a topic exchange to publish one event per message to")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the services do")
    options = parser.parse_args()
    coroutine = serve(
        options.amqp_url,
        options.queue,
        database_url=options.database_url,
        statements=options.statements,
        group_commit=options.group_commit,
        quorum=options.quorum,
        events=options.events,
    )
    try:
        uvloop.run(coroutine) if options.uvloop else asyncio.run(coroutine)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
