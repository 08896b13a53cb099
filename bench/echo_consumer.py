"""Baseline 2, the far side: an aio-pika consumer that sends every message's body back.

`python -m bench.echo_consumer AMQP_URL QUEUE` declares QUEUE (classic, transient: the barest
kind), takes up to 32 unacknowledged messages at once (the services' PREFETCH_COUNT default),
publishes each body to its `reply_to` with its `correlation_id`, then acks it.

`python -m bench.echo_consumer AMQP_URL QUEUE DATABASE_URL STATEMENTS` first runs, per message,
one PostgreSQL transaction of STATEMENTS inserts of the body (BEGIN, the inserts, COMMIT): the
floor `bench.floor` measures.
"""

from __future__ import annotations

import asyncio
import sys

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

PREFETCH_COUNT = 32


async def serve(amqp_url: str, queue_name: str, database_url: str | None = None, statements: int = 0) -> None:
    pool = None
    if database_url:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body text NOT NULL)")
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH_COUNT)
    queue = await channel.declare_queue(queue_name, auto_delete=True)

    async def echo(message: AbstractIncomingMessage) -> None:
        if pool is not None:
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(statements):
                    await conn.execute("INSERT INTO bench_floor (body) VALUES ($1)", message.body.decode())
        if message.reply_to:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, content_type="application/json", correlation_id=message.correlation_id),
                routing_key=message.reply_to,
            )
        await message.ack()

    await queue.consume(echo)
    await asyncio.Future()  # until the harness stops us


if __name__ == "__main__":
    try:
        if len(sys.argv) == 5:
            asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
        else:
            asyncio.run(serve(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:
        pass
