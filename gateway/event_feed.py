"""The gateway's feed of public events: the read side (`GET /live`, the read cache) listens to it.

Each gateway replica consumes from a queue of its own, `gateway.live.<instance>`, bound to the
events declared public (shared/events.py). The queue is exclusive: it goes with the replica's
connection, so replicas come and go without leaving queues behind. It is also why the feed has a
connection of its own rather than the command client's robust one: when that connection is lost,
so is the queue and whatever was published meanwhile, and the listeners must be told.

An event is accepted only from the service that owns it (its AMQP `user_id`, which RabbitMQ
checks against the publishing connection) and only if its body is valid for its model; anything
else changes nothing and is parked in `gateway.events.dead`. Listeners get only the public fields.

Listeners hear three things: an event; `down()`, when the feed stops receiving (broker restart,
a channel the broker closed), after which events may be missed; and `up()`, when it receives
again. A listener that keeps state derived from events (the cache) must not trust it while the
feed is down, and must forget it on `up()` after a `down()`: there may be a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import uuid4

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pydantic import ValidationError

from shared import jsoncodec
from shared.broker import EVENTS_EXCHANGE, LIVE_QUEUE_PREFIX
from shared.broker_failover import connect_first
from shared.events import EVENTS, public_events
from shared.pacing import Backoff
from shared.topology import LIVE_QUEUE_ARGUMENTS

log = logging.getLogger(__name__)

#: How often the feed checks that the broker still answers, and how long an answer may take:
#: together, the longest a silent partition goes unnoticed (the contract allows one second).
PROBE_SECONDS = 0.4
PROBE_TIMEOUT_SECONDS = 0.5
#: How long closing a lost connection may take before the feed connects again anyway.
CLOSE_SECONDS = 2.0

#: How many events may be in flight to one gateway unacknowledged: the handler is quick (it only
#: hands the event to in-memory listeners), so this bounds memory, not throughput.
PREFETCH = 256


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A public event as the read side sees it: its routing key, id and public fields only."""

    key: str
    event_id: str
    data: Mapping[str, Any]

    def json(self) -> bytes:
        return jsoncodec.dumps(dict(self.data))


class FeedListener(Protocol):
    def event(self, event: FeedEvent) -> None: ...
    def down(self) -> None: ...
    def up(self) -> None: ...


def public_fields(key: str, body: bytes) -> FeedEvent:
    """The event's public fields, validated by its model; ValueError when the body is not valid."""
    declaration = EVENTS[key]
    try:
        event = declaration.model.model_validate_json(body)
    except ValidationError:
        raise ValueError(f"Malformed {key!r} event") from None
    dumped = event.model_dump(mode="json")
    return FeedEvent(key, str(dumped["event_id"]), {name: dumped[name] for name in declaration.public})


class EventFeed:
    """Consumes the public events for one gateway replica and hands them to its listeners."""

    def __init__(self, amqp_url: str, *, owners: Mapping[str, str], on_outcome: Callable[[str, str], None] | None = None) -> None:
        self._url = amqp_url
        #: By public routing key, the broker user of the one service that may publish it.
        self._owners = {key: owners[EVENTS[key].owner.name] for key in public_events()}
        self._listeners: list[FeedListener] = []
        self._on_outcome = on_outcome
        self._task: asyncio.Task[None] | None = None
        self._live = False
        self.queue_name = f"{LIVE_QUEUE_PREFIX}{uuid4().hex}"
        #: Which of AMQP_URL's brokers the feed last reached (-1: none yet, so it starts at the first).
        self._broker = -1

    @property
    def live(self) -> bool:
        """Whether events reach this replica right now: what a listener keeps is trustworthy."""
        return self._live

    def listen(self, listener: FeedListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="event-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._set_down()

    async def _run_forever(self) -> None:
        delays = Backoff(0.5)
        while True:
            try:
                await self._run_once()
                delays = Backoff(0.5)  # it was up: the next loss starts from a short wait again
                log.warning("the event feed lost the broker; the read side waits for it")
            except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, TimeoutError) as exc:
                delay = next(delays)
                log.warning("event feed: broker unreachable; retrying", extra={"error": str(exc) or type(exc).__name__, "retry_in": delay})
                await asyncio.sleep(delay)

    async def _run_once(self) -> None:
        """Connect, subscribe, and return when the connection or the channel is lost."""
        connection: AbstractConnection | None = None
        lost = asyncio.Event()
        try:
            # The next broker first: the one just lost is likely the one that went away.
            connection, self._broker = await connect_first(self._url, start=self._broker + 1, timeout=5)
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await self._subscribe(channel)
            self._set_up()
            watchdog = asyncio.create_task(self._watch(channel, lost), name="event-feed-watchdog")
            try:
                await lost.wait()
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
        finally:
            self._set_down()
            if connection is not None and not connection.is_closed:
                # A link that stopped answering would hold a polite close for ever: give it a moment.
                with contextlib.suppress(TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, OSError):
                    await asyncio.wait_for(asyncio.shield(connection.close()), CLOSE_SECONDS)

    async def _watch(self, channel: AbstractChannel, lost: asyncio.Event) -> None:
        """Ask the broker something every PROBE_SECONDS and take a late answer for a lost link.
        A closed or reset connection is seen at once, but a silent partition (packets that just
        stop) only when AMQP heartbeats go missing, a minute later: meanwhile the cache would
        serve answers older than the contract's second. A passive declare of our own queue is the
        cheapest round trip that proves the broker still hears us."""
        while not lost.is_set():
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await asyncio.wait_for(channel.declare_queue(self.queue_name, passive=True), PROBE_TIMEOUT_SECONDS)
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.warning(
                    "the event feed's broker stopped answering; the read side waits for it", extra={"error": str(exc) or type(exc).__name__}
                )
                lost.set()

    async def _subscribe(self, channel: AbstractChannel) -> None:
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(self.queue_name, exclusive=True, arguments=LIVE_QUEUE_ARGUMENTS)
        for key in self._owners:
            await queue.bind(EVENTS_EXCHANGE, routing_key=key)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        key = message.routing_key or ""
        owner = self._owners.get(key)
        if message.exchange != EVENTS_EXCHANGE or owner is None:
            return await self._refuse(message, "not a public event from the events exchange", "malformed")
        if message.user_id != owner:
            # Topic permissions keep other services off this key, but not an admin or a leaked
            # guest: only the owner's `user_id`, which RabbitMQ checks, counts.
            return await self._refuse(
                message, f"a {key!r} event is only accepted from {owner}", "wrong_publisher", publisher=message.user_id
            )
        try:
            event = public_fields(key, message.body)
        except ValueError as exc:
            return await self._refuse(message, str(exc), "malformed")
        for listener in self._listeners:
            try:
                listener.event(event)
            except Exception:  # one listener's bug must not starve the others
                log.exception("a read-side listener failed on an event", extra={"event": key})
        self._count(key, "ok")
        await message.ack()

    async def _refuse(self, message: AbstractIncomingMessage, reason: str, outcome: str, *, publisher: str | None = None) -> None:
        log.warning("refusing an event; parking it", extra={"reason": reason, "publisher": publisher or "-", "queue": self.queue_name})
        self._count(message.routing_key or "", outcome)
        await message.reject(requeue=False)  # the queue's dead-letter exchange parks it

    def _count(self, key: str, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(key, outcome)

    def _set_up(self) -> None:
        self._live = True
        log.info("the event feed is live", extra={"queue": self.queue_name})
        for listener in self._listeners:
            listener.up()

    def _set_down(self) -> None:
        if not self._live:
            return
        self._live = False
        for listener in self._listeners:
            listener.down()
