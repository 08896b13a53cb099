"""The transactional outbox: events are written with their change and relayed afterwards.

A handler calls `add_event(conn, "post.deleted", {...})` inside the command's transaction, so the
event exists if and only if the change committed (inside the runner the row is buffered and
written by the command's closing statement, still in that transaction). `OutboxRelay` publishes
pending rows to the `events` exchange with publisher confirms and commits their deletion only once
the broker has confirmed; a crash in between publishes the event again, and consumers drop the
duplicate by `event_id`.
The runner wakes its own process's relay after each commit; other writers (operator commands)
NOTIFY the schema's channel, which only that service's relays hear. A woken relay lingers
`linger_seconds` (10 ms) so that the commits right behind join its batch; events usually leave
within about that long. A poll every `poll_seconds` catches anything a lost notification, another
instance's crash or a restart left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
from pydantic import ValidationError

from shared import jsoncodec
from shared.broker import EVENTS_EXCHANGE
from shared.channels import close_quietly
from shared.database import TRANSIENT_DATABASE_ERRORS, Connection, Params, discard_connections, lost_the_primary
from shared.events import EVENTS
from shared.pacing import wait_for_event

log = logging.getLogger(__name__)

#: What pauses the relay until its next pass: the database or the broker being away.
#: A broker lost mid-batch fails a publish with an AMQPError, ConnectionError or RuntimeError
#: (a closed connection), or the batch's confirms time out (CONFIRM_SECONDS).
_RELAY_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_DATABASE_ERRORS,
    aio_pika.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,
    TimeoutError,
)
_FLUSH_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_RELAY_ERRORS)


def notify_channel(schema: str) -> str:
    """The channel a schema's outbox writers NOTIFY: only that service's relays listen on it."""
    return f"outbox.{schema}"


#: A statement's NOTIFY to the relays of the schema it writes in (`notify_channel` of the current
#: schema), delivered when it commits.
#: How long a batch may wait for its publisher confirms before it is rolled back and retried.
CONFIRM_SECONDS = 10.0
NOTIFY_SQL = "SELECT pg_notify('outbox.' || current_schema(), '')"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event on its way into the outbox."""

    event_id: UUID
    routing_key: str
    body: dict[str, Any]


class EventBuffer:
    """Events a command's handler added, written by the runner's closing statement.

    The runner writes them in the same transaction as the effect, with the saved reply and the
    audit row, so a command costs one round trip less per event. Leaving the buffer with events
    nobody took is a bug, and raises inside the transaction so that it rolls back.
    """

    def __init__(self, conn: Connection, allowed: tuple[str, ...] | None = None) -> None:
        self.conn = conn
        self._allowed = allowed
        self._events: list[OutboxEvent] = []

    def add(self, event: OutboxEvent) -> None:
        if self._allowed is not None and event.routing_key not in self._allowed:
            # Raised inside the transaction, so the change rolls back with it: a command's
            # declaration says which events it emits, and the broker permissions follow from that.
            raise UndeclaredEventError(f"{event.routing_key!r} is not among the events this command declares: {self._allowed}")
        self._events.append(event)

    def take(self) -> list[OutboxEvent]:
        events, self._events = self._events, []
        return events

    def __bool__(self) -> bool:
        return bool(self._events)


_buffer: ContextVar[EventBuffer | None] = ContextVar("outbox_buffer", default=None)


@contextmanager
def buffered(conn: Connection, allowed: tuple[str, ...] | None = None) -> Iterator[EventBuffer]:
    """Within the block, `add_event` on `conn` buffers instead of writing; the caller must
    `take()` the events and write them before the block ends. `allowed`: the only routing keys
    that may be added (a command's declared `emits`)."""
    buffer = EventBuffer(conn, allowed)
    token = _buffer.set(buffer)
    try:
        yield buffer
    finally:
        _buffer.reset(token)
    if buffer:
        raise RuntimeError("events were added but never written to the outbox")


class UndeclaredEventError(RuntimeError):
    """An event that is not declared (shared/events.py), or not declared for this command, or
    whose body does not fit its model: it would be refused by the broker or by its consumers."""


def new_event(routing_key: str, data: dict[str, Any]) -> OutboxEvent:
    """An event with its id and time, its body checked against the declared model."""
    declaration = EVENTS.get(routing_key)
    if declaration is None:
        raise UndeclaredEventError(f"{routing_key!r} is not a declared event: declare it in shared/events.py")
    event_id = uuid4()
    body = {"event_id": str(event_id), "occurred_at": datetime.now(UTC).isoformat(), **data}
    try:
        declaration.model.model_validate(body)
    except ValidationError as exc:
        raise UndeclaredEventError(f"{routing_key!r} does not fit its model: {exc}") from None
    return OutboxEvent(event_id, routing_key, body)


def insert_events_sql(events: list[OutboxEvent], params: Params) -> str:
    """An INSERT of `events` into the outbox, in their order, for a data-modifying CTE."""
    return (
        "INSERT INTO outbox (event_id, routing_key, body) SELECT * FROM unnest("
        f"{params([e.event_id for e in events])}::uuid[], {params([e.routing_key for e in events])}::text[],"
        f" {params([e.body for e in events])}::jsonb[])"
    )


async def add_event(conn: Connection, routing_key: str, data: dict[str, Any]) -> UUID:
    """Record an event in the current transaction; it is published after commit."""
    event = new_event(routing_key, data)
    buffer = _buffer.get()
    if buffer is not None and buffer.conn is conn:
        buffer.add(event)
        return event.event_id
    # One round trip: the row, and the NOTIFY that wakes a relay when the transaction commits.
    params = Params()
    await conn.execute(f"WITH event AS ({insert_events_sql([event], params)}) {NOTIFY_SQL}", *params.values)
    return event.event_id


class OutboxRelay:
    """Moves committed events from this schema's outbox to the broker, in order, at least once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        schema: str,
        connection: aio_pika.abc.AbstractConnection,
        *,
        user_id: str,
        poll_seconds: float = 1.0,
        batch_size: int = 200,
        linger_seconds: float = 0.01,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self._connection = connection
        #: The relay's own confirm channel, opened on first use and replaced after a nack.
        self._channel: aio_pika.abc.AbstractChannel | None = None
        # The owner's broker user: consumers accept an event only with its owner's `user_id`.
        self._user_id = user_id
        self._poll = poll_seconds
        self._batch = batch_size
        self._linger = linger_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._finished = asyncio.Event()
        self._finished.set()  # not running yet: nothing to wait for
        self.published = 0
        self.batches = 0
        #: How many times a nack made the relay publish on a new channel.
        self.renewals = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        self._finished.clear()
        try:
            while not self._stopping:
                try:
                    while await self.relay_batch() == self._batch:
                        pass
                except _RELAY_ERRORS as exc:
                    log.warning("outbox relay paused", extra={"error": str(exc) or type(exc).__name__})
                    if lost_the_primary(exc):
                        await discard_connections(self._pool)
                except Exception:  # noqa: BLE001 - a relay that dies relays nothing ever again: keep going, loudly
                    log.exception("outbox relay failed unexpectedly; retrying")
                woken = await wait_for_event(self._wake, self._poll)
                if woken and not self._stopping:
                    # Let the commits of the next few milliseconds join the batch: a batch costs
                    # three round trips however many events it carries, and nobody waits on an
                    # event the way a caller waits on a reply.
                    await asyncio.sleep(self._linger)
                self._wake.clear()
        finally:
            listener.cancel()
            self._finished.set()

    async def stop(self, deadline: float = 5.0) -> None:
        """Let `run` finish the batch it holds, then flush everything pending (within `deadline`).

        Flushing while `run` still held its rows would skip them (SKIP LOCKED) and leave them behind.
        """
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(deadline):
                await self._finished.wait()
                while await self.relay_batch():
                    pass
        except _FLUSH_ERRORS:
            log.warning("outbox not flushed at shutdown; it will be relayed on the next start")

    async def relay_batch(self) -> int:
        """Publish one batch of pending events; returns how many went out."""
        if self._channel is None:
            # Bounded: a robust connection's new channel waits for the broker to be back.
            async with asyncio.timeout(CONFIRM_SECONDS):
                self._channel = await self._connection.channel(publisher_confirms=True)
        channel = self._channel
        exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        async with self._pool.acquire() as conn, conn.transaction():
            # Take the batch and delete it in one statement; if a publish fails, the transaction
            # rolls back and the rows are there again. SKIP LOCKED lets two instances of a
            # service relay side by side without doubling up.
            taken = await conn.fetch(
                "DELETE FROM outbox WHERE position IN (SELECT position FROM outbox"
                " ORDER BY position LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " RETURNING position, event_id, routing_key, body",
                self._batch,
            )
            if not taken:
                return 0
            rows = sorted(taken, key=lambda row: row["position"])  # RETURNING keeps no order
            confirmations = [
                exchange.publish(
                    aio_pika.Message(
                        jsoncodec.dumps(row["body"]),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=str(row["event_id"]),
                        type=row["routing_key"],
                        user_id=self._user_id,
                    ),
                    routing_key=row["routing_key"],
                    mandatory=False,
                )
                for row in rows
            ]
            # Confirms are pipelined: all publishes go out, then we wait for every ack. Bounded: a
            # confirm owed by a broker connection that died (a cluster node that went) may never
            # come, and the relay would hold these rows locked and publish nothing more. Timing
            # out rolls the batch back to be published again (at least once: consumers dedupe).
            try:
                async with asyncio.timeout(CONFIRM_SECONDS):
                    await asyncio.gather(*confirmations)
            except aio_pika.exceptions.DeliveryError:
                # A nack: the broker did not take an event (the events queues hold no limit), and
                # the channel may stay refused for good (shared/channels.py): the next pass
                # publishes on a new one.
                self._channel = None
                self.renewals += 1
                await close_quietly(channel)
                raise
        self.published += len(rows)
        self.batches += 1
        return len(rows)

    async def backlog(self) -> tuple[int, float]:
        """How many events wait to be relayed, and the age in seconds of the oldest (0 if none)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS pending,"
                " coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS age FROM outbox"
            )
        assert row is not None  # an aggregate always has its row
        return int(row["pending"]), max(float(row["age"]), 0.0)

    async def _listen(self) -> None:
        """Wake the relay on NOTIFY from any process writing to this schema's outbox."""
        while not self._stopping:
            try:
                conn = await asyncpg.connect(self._dsn)
            except TRANSIENT_DATABASE_ERRORS:
                await asyncio.sleep(self._poll)
                continue
            try:

                def on_notify(_conn: object, _pid: int, _channel: str, _payload: object) -> None:
                    self._wake.set()

                await conn.add_listener(notify_channel(self._schema), on_notify)
                while not self._stopping and not conn.is_closed():
                    await asyncio.sleep(self._poll)
            except TRANSIENT_DATABASE_ERRORS:
                pass
            finally:
                if not conn.is_closed():
                    await conn.close()
