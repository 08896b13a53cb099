"""A raw broker client for tests: publish anything on `commands`/`events`, await the reply.

Unlike the production client it builds no message for you: tests choose the body bytes, the
headers, the type and whether there is a reply_to, so they can inject what an attacker would.

It connects as the run vhost's admin (guest): an outsider with full broker credentials, exactly the
attacker of the threat model, whose messages carry no process's `user_id`. `as_process="auth"`
(or another process name) publishes as that process's own broker user instead, with its
`user_id`: a legitimate event from its owner, or the gateway vouching for a client address.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pamqp import body as amqp_body
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from yarl import URL

#: RabbitMQ's direct reply-to pseudo-queue: replies come back on the channel that consumes it.
REPLY_TO = "amq.rabbitmq.reply-to"

#: `conftest.eventually`: poll a check until it returns something truthy, or fail.
WaitUntil = Callable[..., Awaitable[Any]]


class BrokerProbe:
    def __init__(self, connection: AbstractRobustConnection, amqp_url: str, process_urls: dict[str, str] | None = None) -> None:
        self._connection = connection
        self._url = URL(amqp_url)
        self._process_urls = process_urls or {}
        self._as_process: dict[str, tuple[AbstractConnection, AbstractChannel]] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.channel: AbstractChannel

    async def start(self) -> None:
        await self._open()
        # After a broker restart the robust connection comes back, but not the reply consumer.
        self._connection.reconnect_callbacks.add(self._reopen)

    async def _open(self) -> None:
        self.channel = await self._connection.channel()
        reply_queue = await self.channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)
        # Direct reply-to only answers the channel that published; a bare publisher needs a queue.
        self._bare_replies = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self._bare_replies.consume(self._on_reply, no_ack=True)

    async def _reopen(self, *_: Any) -> None:
        await self._open()

    async def close(self) -> None:
        for connection, _channel in self._as_process.values():
            await connection.close()
        self._as_process.clear()

    async def channel_of(self, process: str) -> AbstractChannel:
        """A channel connected as `process`'s own broker user (kept for the run)."""
        opened = self._as_process.get(process)
        if opened is None or opened[0].is_closed or opened[1].is_closed:
            connection = await aio_pika.connect(self._process_urls[process])
            opened = (connection, await connection.channel())
            self._as_process[process] = opened
        return opened[1]

    @property
    def outsider(self) -> str:
        """The probe's own broker user (the vhost's admin), which is no process's."""
        return self._url.user or "guest"

    def url_of(self, process: str) -> str:
        """`process`'s own AMQP_URL."""
        return self._process_urls[process]

    def user_of(self, process: str) -> str:
        """`process`'s broker user name: the `user_id` its messages carry."""
        return URL(self._process_urls[process]).user or ""

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
        properties: dict[str, Any] | None = None,
        bare: bool = False,
        as_process: str | None = None,
    ) -> dict[str, Any] | None:
        """Publish a command; returns the decoded reply, or None when reply=False.

        `properties` override the AMQP properties set here. aio-pika (aiormq) invents a message_id
        for a message that has none; `bare=True` publishes through `publish_bare` instead, which
        sends exactly the properties given, as Node's amqplib does."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        correlation_id = uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if reply:
            self._pending[correlation_id] = future
        message = aio_pika.Message(
            body if body is not None else json.dumps(payload if payload is not None else {}).encode(),
            headers=all_headers,
            **{
                "content_type": "application/json",
                "message_id": message_id or str(uuid4()),
                "type": command if message_type is True else (message_type or None),
                "reply_to": REPLY_TO if reply else None,
                "correlation_id": correlation_id,
                "delivery_mode": aio_pika.DeliveryMode.PERSISTENT,
                **(properties or {}),
            },
        )
        await self.ready()
        if as_process is not None:
            # Replies come back to a queue of ours: direct reply-to answers only the publishing channel.
            message.reply_to = self._bare_replies.name if reply else None
            message.user_id = self.user_of(as_process)
            channel = await self.channel_of(as_process)
            exchange = await channel.get_exchange("commands", ensure=False)
            await exchange.publish(message, routing_key=command, mandatory=False)
        elif bare:
            message.reply_to = self._bare_replies.name if reply else None
            await publish_bare(self._url, "commands", command, message)
        else:
            exchange = await self.channel.get_exchange("commands", ensure=False)
            await exchange.publish(message, routing_key=command, mandatory=False)
        if not reply:
            return None
        return await asyncio.wait_for(future, timeout)

    async def event(
        self, routing_key: str, body: dict[str, Any] | bytes, *, as_process: str | None = None, user_id: str | None = None
    ) -> None:
        """Publish an event on `events`: as the outsider, or `as_process` (with its `user_id`).
        `user_id` sets the property as given (RabbitMQ closes the channel unless it is ours)."""
        await self.ready()
        channel = self.channel if as_process is None else await self.channel_of(as_process)
        exchange = await channel.get_exchange("events", ensure=False)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        claimed = user_id if user_id is not None else (self.user_of(as_process) if as_process is not None else None)
        # Like the outbox relay: the event_id is the message_id (operators replay by it).
        message_id = str(body["event_id"]) if isinstance(body, dict) and "event_id" in body else None
        await exchange.publish(
            aio_pika.Message(
                raw, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=claimed, message_id=message_id
            ),
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

    async def to_queue(self, queue: str, body: bytes, **properties: Any) -> None:
        """Publish straight to `queue` through the default exchange. Any broker user may (services
        need it for replies), so a consumer must refuse what arrives that way."""
        await self.ready()
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/json", **properties), routing_key=queue
        )

    async def parked(
        self, queue: str, matches: Callable[[AbstractIncomingMessage], bool], *, timeout: float = 5.0
    ) -> AbstractIncomingMessage:
        """Drain `<queue>.dead` until a message that `matches` turns up (dead-lettering follows the
        reply, so it may take a moment); AssertionError after `timeout`."""
        drained: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            drained.extend(await self.dead_letters(queue))
            hits = [message for message in drained if matches(message)]
            if hits:
                return hits[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no matching message in {queue}.dead within {timeout} s ({len(drained)} others)")
            await asyncio.sleep(0.05)

    async def open_channel(self, **options: Any) -> AbstractChannel:
        """A channel of the probe's connection for a test's own consumer; the test closes it."""
        return await self._connection.channel(**options)

    @asynccontextmanager
    async def tap(self, routing_keys: Iterable[str], wait_until: WaitUntil, db: asyncpg.Pool | None = None) -> AsyncIterator[EventTap]:
        """An `EventTap` on `routing_keys` for the life of the block."""
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        for key in routing_keys:
            await queue.bind("events", routing_key=key)
        try:
            yield EventTap(queue, wait_until, db)
        finally:
            await queue.delete(if_unused=False, if_empty=False)


async def publish_bare(url: URL, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
    """Publish one message from a minimal AMQP 0-9-1 client of our own (pamqp frames over a socket)
    that adds nothing to the properties it is given: no invented message_id."""
    reader, writer = await asyncio.open_connection(url.host or "127.0.0.1", url.port or 5672)
    buffer = b""

    async def expect(kind: type) -> Any:
        nonlocal buffer
        while True:
            try:
                used, _channel, frame = amqp_frame.unmarshal(buffer)
            except Exception:  # pamqp raises UnmarshalingException (or struct errors) on a partial frame
                buffer += await asyncio.wait_for(reader.read(65536), 5)
                continue
            buffer = buffer[used:]
            if isinstance(frame, kind):
                return frame

    def send(value: Any, channel: int) -> None:
        writer.write(amqp_frame.marshal(value, channel))

    try:
        writer.write(amqp_frame.marshal(amqp_header.ProtocolHeader(), 0))
        await expect(amqp.Connection.Start)
        send(amqp.Connection.StartOk(response=f"\0{url.user or 'guest'}\0{url.password or 'guest'}"), 0)
        tune = await expect(amqp.Connection.Tune)
        send(amqp.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0), 0)
        send(amqp.Connection.Open(virtual_host=url.path[1:] or "/"), 0)
        await expect(amqp.Connection.OpenOk)
        send(amqp.Channel.Open(), 1)
        await expect(amqp.Channel.OpenOk)
        properties = amqp.Basic.Properties(
            content_type=message.content_type,
            headers=message.headers or None,
            delivery_mode=message.delivery_mode.value if message.delivery_mode else None,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            message_type=message.type,
        )
        send(amqp.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
        send(amqp_header.ContentHeader(body_size=len(message.body), properties=properties), 1)
        send(amqp_body.ContentBody(message.body), 1)
        send(amqp.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0), 0)
        await expect(amqp.Connection.CloseOk)
    finally:
        writer.close()


class EventTap:
    """A private queue bound to some routing keys of `events`, to see what was announced (and to
    capture real events for replaying them)."""

    def __init__(self, queue: AbstractQueue, wait_until: WaitUntil, db: asyncpg.Pool | None = None) -> None:
        self._queue = queue
        self._wait_until = wait_until
        self._db = db
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def arrived(self, routing_key: str, **match: str) -> list[dict[str, Any]]:
        """The events `routing_key` whose fields equal `match`, among all that arrived so far."""
        while (message := await self._queue.get(no_ack=True, fail=False)) is not None:
            self.seen.append((message.routing_key or "", json.loads(message.body)))
        return [body for key, body in self.seen if key == routing_key and all(body.get(f) == v for f, v in match.items())]

    async def captured(self, routing_key: str, **match: str) -> dict[str, Any]:
        """The one event `routing_key` whose fields equal `match`, waiting for it to be published."""
        events = await self._wait_until(lambda: self.arrived(routing_key, **match), timeout=5.0)
        assert len(events) == 1, f"expected one {routing_key} event matching {match}, got {events}"
        return events[0]

    async def settled(self, schema: str, routing_key: str, **match: str) -> list[dict[str, Any]]:
        """Events `routing_key` matching `match`, once `schema`'s outbox has been relayed.

        An effect's event is committed with it, before the reply; once the outbox is empty it has
        been published (with confirms), so it is in our queue if it was ever going to be.
        """
        assert self._db is not None, "a tap that waits for an outbox needs the database"
        db = self._db

        async def outbox_empty() -> bool:
            return await db.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0

        await self._wait_until(outbox_empty, timeout=5.0)
        return await self.arrived(routing_key, **match)
