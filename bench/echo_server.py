"""Baseline 2, the near side: aiohttp in front of one aio-pika RPC over RabbitMQ.

`python -m bench.echo_server PORT AMQP_URL QUEUE`: `POST /` publishes the body to QUEUE with
`reply_to` = direct reply-to and a correlation id, awaits the reply (10 s at most) and answers
with it. One channel with aio-pika's defaults (publisher confirms on), transient messages: the
bare path every request of the stack takes at least once, with no auth, database or logging.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from uuid import uuid4

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

REPLY_QUEUE = "amq.rabbitmq.reply-to"
TIMEOUT_SECONDS = 10.0


class EchoClient:
    """Publishes to the echo queue and matches replies to callers by correlation id."""

    def __init__(self, amqp_url: str, queue: str) -> None:
        self._url, self._queue = amqp_url, queue
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        self._channel = await self._connection.channel()
        await self._channel.declare_queue(self._queue, auto_delete=True)
        replies = await self._channel.get_queue(REPLY_QUEUE, ensure=False)
        await replies.consume(self._on_reply, no_ack=True)

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
            message = aio_pika.Message(body, correlation_id=correlation_id, reply_to=REPLY_QUEUE)
            await self._channel.default_exchange.publish(message, routing_key=self._queue)
            return await asyncio.wait_for(future, TIMEOUT_SECONDS)
        finally:
            self._pending.pop(correlation_id, None)


ECHO = web.AppKey("echo", EchoClient)


async def echo(request: web.Request) -> web.Response:
    reply = await request.app[ECHO].call(await request.read())
    return web.Response(body=reply, content_type="application/json")


def create_app(amqp_url: str, queue: str) -> web.Application:
    app = web.Application()

    async def echo_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ECHO] = EchoClient(amqp_url, queue)
        await app[ECHO].start()
        yield
        await app[ECHO].close()

    app.cleanup_ctx.append(echo_ctx)
    app.router.add_post("/", echo)
    return app


if __name__ == "__main__":
    web.run_app(create_app(sys.argv[2], sys.argv[3]), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
