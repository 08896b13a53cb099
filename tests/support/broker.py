"""A raw broker client for tests: publish anything on `commands`/`events`, await the reply.

Unlike the production client it builds no message for you: tests choose the body bytes, the
headers, the type and whether there is a reply_to, so they can inject what an attacker would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import uuid4

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection


class BrokerProbe:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.channel: AbstractChannel

    async def start(self) -> None:
        await self._open()
        # After a broker restart the robust connection comes back, but not the reply consumer.
        self._connection.reconnect_callbacks.add(self._reopen)

    async def _open(self) -> None:
        self.channel = await self._connection.channel()
        reply_queue = await self.channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)

    async def _reopen(self, *_: Any) -> None:
        await self._open()

    async def ready(self, timeout: float = 30) -> None:
        """Wait out a broker restart: the connection comes back, then `_reopen` gives a new channel."""
        async with asyncio.timeout(timeout):
            while self.channel.is_closed or self._connection.is_closed:
                await asyncio.sleep(0.1)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body))

    async def command(
        self,
        command: str,
        payload: Any = None,
        *,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, Any] | None = None,
        message_type: str | None | bool = True,
        message_id: str | None = None,
        reply: bool = True,
        timeout: float = 10.0,
    ) -> dict[str, Any] | None:
        """Publish a command; returns the decoded reply, or None when reply=False."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        correlation_id = uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if reply:
            self._pending[correlation_id] = future
        message = aio_pika.Message(
            body if body is not None else json.dumps(payload if payload is not None else {}).encode(),
            content_type="application/json",
            message_id=message_id or str(uuid4()),
            type=command if message_type is True else (message_type or None),
            headers=all_headers,
            reply_to="amq.rabbitmq.reply-to" if reply else None,
            correlation_id=correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.ready()
        exchange = await self.channel.get_exchange("commands", ensure=False)
        await exchange.publish(message, routing_key=command, mandatory=False)
        if not reply:
            return None
        return await asyncio.wait_for(future, timeout)

    async def event(self, routing_key: str, body: dict[str, Any] | bytes) -> None:
        await self.ready()
        exchange = await self.channel.get_exchange("events", ensure=False)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await exchange.publish(
            aio_pika.Message(raw, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
            mandatory=False,
        )

    async def dead_letters(self, queue: str) -> list[AbstractIncomingMessage]:
        """Drain `<queue>.dead` and return what was in it."""
        dead = await self.channel.get_queue(f"{queue}.dead", ensure=False)
        found = []
        while (message := await dead.get(no_ack=True, fail=False)) is not None:
            found.append(message)
        return found
