"""Baseline 2, the far side: an aio-pika consumer that sends every message's body back.

`python -m bench.echo_consumer AMQP_URL QUEUE` declares QUEUE (classic, transient: the barest
kind), takes up to 32 unacknowledged messages at once (the services' PREFETCH_COUNT default),
publishes each body to its `reply_to` with its `correlation_id`, then acks it.
"""

from __future__ import annotations

import asyncio
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

PREFETCH_COUNT = 32


async def serve(amqp_url: str, queue_name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH_COUNT)
    queue = await channel.declare_queue(queue_name, auto_delete=True)

    async def echo(message: AbstractIncomingMessage) -> None:
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
        asyncio.run(serve(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:
        pass
