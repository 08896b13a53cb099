"""Baseline 2, the near side: aiohttp in front of one aio-pika RPC over RabbitMQ.

`python -m bench.echo_server PORT AMQP_URL QUEUE`: `POST /` publishes the body to QUEUE with
`reply_to` = direct reply-to and a correlation id, awaits the reply (10 s at most) and answers
with it. One channel with aio-pika's defaults (publisher confirms on), transient messages: the
bare path every request of the stack takes at least once, with no auth, database or logging.

For `bench.floor`: `--quorum` publishes persistent messages to QUEUE declared as a durable quorum
queue (what a command costs the broker); `--events EXCHANGE` also consumes, from an exclusive queue
of its own bound to that topic exchange, the events the consumer publishes, acking each (what the
gateway's read side costs, bench.echo_consumer `--events`); `--uvloop` runs it on uvloop, as the
gateway runs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import aio_pika
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from bench.echo_consumer import declare_queue

REPLY_QUEUE = "amq.rabbitmq.reply-to"
TIMEOUT_SECONDS = 10.0


class EchoClient:
    """Publishes to the echo queue and matches replies to callers by correlation id."""

    def __init__(self, amqp_url: str, queue: str, *, quorum: bool = False, events: str | None = None) -> None:
        self._url, self._queue = amqp_url, queue
        self._quorum, self._events = quorum, events
        self._delivery_mode = aio_pika.DeliveryMode.PERSISTENT if quorum else aio_pika.DeliveryMode.NOT_PERSISTENT
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        self._channel = await self._connection.channel()
        await declare_queue(self._channel, self._queue, quorum=self._quorum)
        replies = await self._channel.get_queue(REPLY_QUEUE, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)
        if self._events:
            exchange = await self._channel.declare_exchange(self._events, aio_pika.ExchangeType.TOPIC, auto_delete=True)
            feed = await self._channel.declare_queue(exclusive=True)
            await feed.bind(exchange, routing_key="#")
            await feed.consume(self._on_event)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        await message.ack()

    async def close(self) -> None:
        await self._connection.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, body: bytes) -> bytes:
        correlation_id = uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            message = aio_pika.Message(body, correlation_id=correlation_id, reply_to=REPLY_QUEUE, delivery_mode=self._delivery_mode)
            await self._channel.default_exchange.publish(message, routing_key=self._queue)
            return await asyncio.wait_for(future, TIMEOUT_SECONDS)
        finally:
            self._pending.pop(correlation_id, None)


ECHO = web.AppKey("echo", EchoClient)


async def echo(request: web.Request) -> web.Response:
    reply = await request.app[ECHO].call(await request.read())
    return web.Response(body=reply, content_type="application/json")


def create_app(amqp_url: str, queue: str, *, quorum: bool = False, events: str | None = None) -> web.Application:
    app = web.Application()

    async def echo_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ECHO] = EchoClient(amqp_url, queue, quorum=quorum, events=events)
        await app[ECHO].start()
        yield
        await app[ECHO].close()

    app.cleanup_ctx.append(echo_ctx)
    app.router.add_post("/", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("amqp_url")
    parser.add_argument("queue")
    parser.add_argument("--quorum", action="store_true", help="QUEUE is a durable quorum queue; messages are persistent")
    parser.add_argument("--events", help="a topic exchange whose events to consume and ack")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the gateway does")
    options = parser.parse_args()
    app = create_app(options.amqp_url, options.queue, quorum=options.quorum, events=options.events)
    loop = uvloop.new_event_loop() if options.uvloop else None
    web.run_app(app, host="127.0.0.1", port=options.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
