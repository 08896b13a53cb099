"""The one consumer runner: every message of every service goes through here.

For a command:   decode -> verify token -> validate payload -> (in one transaction:) check session
                 and ban, and claim message_id (one statement) -> authorize (policy) -> handle ->
                 save reply, audit row and events (one statement) -> commit -> reply -> ack.
                 Under load the transaction is shared with the commands queued beside it, each in
                 a savepoint of its own, and committed once for all (shared/group_commit.py).
A public read (a route declared `reads_only`) runs its handler outside a transaction, on a
read-only connection: it has no session to check, no message id to claim and nothing to audit.
For an event:    decode -> check its publisher -> validate -> (in one transaction:) skip if seen ->
                 handle -> commit -> ack.

Who published a message is its AMQP `user_id`, which RabbitMQ checks against the publishing
connection's user. An event is applied only when it comes from the broker user of the service that
owns it (shared/events.py), and `x-client-address` and `x-client-user-agent` are believed only from the gateway's: anything
else is parked with the reason, counted in `wrong_publisher_total` and changes nothing. A command
from anyone but the gateway counts against the per-address login limit under its publisher
(`broker:<user>`), so publishing straight to the broker is no way around that limit.
Everything this runner publishes (replies, parked messages) carries its own `user_id` too.

A message that is not JSON, has no message_id, names an unknown command or carries a malformed
payload gets an error reply and is dead-lettered with the reason, its secrets redacted
(shared/redaction.py); a refused command gets its error reply and is acked
(refusing it *is* handling it). A database outage is waited out with backoff while the message
stays unacked, so nothing accepted is lost and nothing spins. Anything else that escapes a handler
is a bug: the caller gets a bare 500, the message is dead-lettered, and the consumer keeps going.
Service code never sees aio-pika: handlers get a payload, a caller and a connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from shared import audit, bookkeeping, idempotency, logs, outbox
from shared.broker import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DELIVERY_LIMIT,
    EVENTS_EXCHANGE,
    command_queue_name,
    event_queue_name,
)
from shared.channels import RENEW_SECONDS, close_quietly
from shared.commands import COMMANDS, parse_payload
from shared.database import TRANSIENT_DATABASE_ERRORS, Connection, discard_connections, lost_the_primary
from shared.declarations import GATEWAY
from shared.envelope import (
    AUTHORIZATION_HEADER,
    CLIENT_ADDRESS_HEADER,
    CLIENT_USER_AGENT_HEADER,
    GATEWAY_ONLY_HEADERS,
    REQUEST_ID_HEADER,
    HeaderNotText,
    MessageContext,
    bounded_user_agent,
    current_message,
    error_reply,
    header_hint,
    header_text,
    ok_reply,
    request_id_for,
    reset_current_message,
    set_current_message,
    valid_message_id,
)
from shared.errors import AppError, BadRequest, Forbidden, InternalError, NotFound, PayloadTooLarge, Unauthorized, Unprocessable
from shared.events import EVENTS
from shared.group_commit import DEFAULT_MAX_BATCH, DEFAULT_WRITERS, GroupCommit
from shared.metrics import ServiceMetrics
from shared.outbox import OutboxRelay
from shared.pacing import Backoff, wait_for_event
from shared.redaction import REDACTED_HEADER, redact_body, redact_headers, secret_values
from shared.routes import CommandRoute, EventRoute, check_routes
from shared.tokens import Caller, TokenVerifier, bearer_token

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The label of a command or event name that is not declared. Metric labels take only declared
#: values: a label taken from the wire would let anyone who can publish add a series per message
#: (and grow /metrics without bound).
UNKNOWN = "unknown"


def metric_label(name: str | None, declared: Iterable[str]) -> str:
    """`name` when it is declared, else `UNKNOWN`."""
    return name if name is not None and name in declared else UNKNOWN


DENIALS = (Unauthorized, Forbidden, NotFound)


class Malformed(Exception):
    """The message cannot be a command at all; it is answered and dead-lettered."""

    def __init__(self, error: AppError) -> None:
        super().__init__(error.detail)
        self.error = error


def failed_deliveries(headers: dict[str, Any]) -> int:
    """How many times the quorum queue has handed this message out without an ack (its
    `x-delivery-count`); 0 for a first delivery or a header that is not a count."""
    count = headers.get("x-delivery-count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _authorization(headers: dict[str, Any]) -> str | None:
    try:
        return header_text(headers, AUTHORIZATION_HEADER)
    except HeaderNotText as exc:
        raise Unauthorized(str(exc)) from None


class WrongPublisher(Malformed):
    """The message came from a broker user that may not send it: parked, and changes nothing."""


def publisher_address(user_id: str | None) -> str:
    """What a command from anyone but the gateway counts as for the per-address login limit:
    its publisher, so a client that skips the gateway is limited like one address."""
    return f"broker:{user_id or '-'}"


class _Requeue(Exception):
    """Give the message back to the broker (we are shutting down mid-outage)."""


@dataclass(slots=True)
class _Command:
    """One attempt at a command inside its transaction, and the decision reached so far."""

    route: CommandRoute
    caller: Caller | None
    payload: Any
    key: bookkeeping.Key | None
    decision: audit.Decision | None = None
    #: What the opening statement found; its owner spares an owner policy a lookup of its own.
    opened: bookkeeping.Opened = bookkeeping.Opened(idempotency.UNSET)

    @property
    def audited(self) -> bool:
        # PUBLIC commands make no decision worth a row: anyone may run them.
        return self.route.policy.needs_token


class MessageProcessor:
    """Runs commands and events against a service's routes. Knows nothing of sockets."""

    def __init__(
        self,
        *,
        service: str,
        commands: list[CommandRoute],
        events: list[EventRoute],
        pool: asyncpg.Pool,
        read_pool: asyncpg.Pool,
        verifier: TokenVerifier,
        metrics: ServiceMetrics,
        relay: OutboxRelay | None,
        max_message_bytes: int,
        group_commit_max_batch: int = DEFAULT_MAX_BATCH,
        group_commit_writers: int = DEFAULT_WRITERS,
        token_ttl_seconds: int,
        user_id: str,
        broker_users: Mapping[str, str],
    ) -> None:
        self.service = service
        #: The broker user this process publishes as (every reply and parked message says so).
        self._user_id = user_id
        self._gateway_user = broker_users[GATEWAY.name]
        #: By routing key, the broker user of the service that owns the event.
        self._event_owners = {key: broker_users[event.owner.name] for key, event in EVENTS.items()}
        self.commands = check_routes(commands)
        self.events = {route.routing_key: route for route in events}
        self._pool = pool
        self._read_pool = read_pool
        self._verifier = verifier
        self._metrics = metrics
        self._relay = relay
        self._commits = GroupCommit(
            pool,
            max_batch=group_commit_max_batch,
            writers=group_commit_writers,
            on_commit=self._committed,
            on_batch=metrics.command_batch_size.observe,
        )
        self._max_bytes = max_message_bytes
        self._anonymous_ttl = token_ttl_seconds
        self._dead_letter_channel: AbstractChannel | None = None
        self._renew_dead_letter_channel: Callable[[], Awaitable[AbstractChannel]] | None = None
        self._next_dead_letter_renewal = 0.0
        self._retired_dead_letter_channel: AbstractChannel | None = None
        self._reply_channel: AbstractChannel | None = None
        self.stopping = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def attach_dead_letter_channel(self, channel: AbstractChannel, renew: Callable[[], Awaitable[AbstractChannel]] | None = None) -> None:
        """Park messages through `channel` (with publisher confirms); `renew` opens another, for
        when the broker nacks a park (`_fresh_dead_letter_channel`)."""
        self._dead_letter_channel = channel
        self._renew_dead_letter_channel = renew

    async def _fresh_dead_letter_channel(self, refused: AbstractChannel) -> AbstractChannel | None:
        """After a nack on `refused`, a channel to try once more: the one another park renewed it
        to, or a new one (at most once a `RENEW_SECONDS`, or a full dead-letter queue would make
        every park open a channel); None when there is none to try."""
        current = self._dead_letter_channel
        if current is not refused:
            return current
        now = asyncio.get_running_loop().time()
        if self._renew_dead_letter_channel is None or now < self._next_dead_letter_renewal:
            return None
        self._next_dead_letter_renewal = now + RENEW_SECONDS
        fresh = await self._renew_dead_letter_channel()
        if self._dead_letter_channel is not refused:  # another park renewed it meanwhile
            await close_quietly(fresh)
            return self._dead_letter_channel
        self._dead_letter_channel = fresh
        # Other parks may still await their confirms on `refused`, and closing a channel fails
        # those with a bare Exception: it is closed at the next renewal, a RENEW_SECONDS on.
        retired, self._retired_dead_letter_channel = self._retired_dead_letter_channel, refused
        if retired is not None:
            await close_quietly(retired)
        return fresh

    def attach_reply_channel(self, channel: AbstractChannel) -> None:
        """Send replies on `channel`, of a connection other than the consumers'. RabbitMQ 3.10
        closes the connection that publishes a reply to a caller whose node has left the cluster
        (INTERNAL_ERROR: rabbit_channel:deliver_reply has no case for it), and on the consumers'
        connection that would hand back every unacknowledged command, again and again, once for
        each command a caller on the lost node left in the queue (OPERATIONS.md)."""
        self._reply_channel = channel

    # -- commands ---------------------------------------------------------------------------

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        started = time.perf_counter()
        name = message.type or message.routing_key or "unknown"
        headers = dict(message.headers or {})
        # Ids from the wire reach logs, the audit trail and the idempotency table only when sane.
        message_id = message.message_id if valid_message_id(message.message_id) else None
        ctx = MessageContext(
            command=name,
            message_id=message_id,
            request_id=request_id_for(header_hint(headers, REQUEST_ID_HEADER), message_id),
            client_address=self._client_address(message, headers),
            client_user_agent=self._client_user_agent(message, headers),
        )
        token = set_current_message(ctx)
        bound = logs.bind(request_id=ctx.request_id, command=name)
        hidden: logs.Hidden | None = None
        outcome = "ok"
        try:
            try:
                if failed_deliveries(headers) >= DELIVERY_LIMIT:
                    # Every earlier delivery died before an ack (it crashes its consumer). One more
                    # failure and RabbitMQ would park it itself, token and passwords in clear: the
                    # runner parks it now, redacted, without running it again.
                    raise Malformed(InternalError(f"This command failed {DELIVERY_LIMIT} deliveries in a row and was set aside"))
                route, caller, payload = await self._admit(message, headers)
                hidden = logs.hide(secret_values(payload, route.declaration.secret_fields))
                result = await self._hold_through_outage(lambda: self._execute_once(route, caller, payload, message), "command")
            except Malformed as exc:
                outcome = str(exc.error.status)
                await self._dead_letter(
                    message,
                    command_queue_name(self.service),
                    f"{exc.error.status} {exc.error.title}: {exc.error.detail}",
                    command=True,
                    reply=error_reply(exc.error),
                )
            except AppError as exc:
                outcome = str(exc.status)
                await self._reply(message, error_reply(exc))
                await message.ack()
            except _Requeue:
                outcome = "requeued"
                await message.nack(requeue=True)
            except Exception as exc:  # a bug in a handler must not kill the consumer
                outcome = "500"
                log.exception("command failed unexpectedly")
                await self._dead_letter(
                    message,
                    command_queue_name(self.service),
                    f"unhandled {type(exc).__name__}",
                    command=True,
                    reply=error_reply(InternalError()),
                )
            else:
                await self._reply(message, ok_reply(result))
                await message.ack()
        except aio_pika.exceptions.AMQPError:
            # The channel died under us; the broker redelivers the unacked message.
            outcome = "broker_lost"
            log.warning("lost the broker while answering a command; it will be redelivered")
        finally:
            label = metric_label(name, COMMANDS)
            self._metrics.commands.labels(label, outcome).inc()
            self._metrics.command_seconds.labels(label).observe(time.perf_counter() - started)
            if hidden is not None:
                logs.unhide(hidden)
            logs.unbind(bound)
            reset_current_message(token)
            self._leave()

    def _client_address(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> str | None:
        """Where the client is, for the per-address login limit: what the gateway says, and for
        anyone else their broker user (a command carrying the header from them is parked)."""
        if message.user_id == self._gateway_user:
            return header_hint(headers, CLIENT_ADDRESS_HEADER)
        return publisher_address(message.user_id)

    def _client_user_agent(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> str | None:
        """The HTTP client's user agent as the gateway saw it (shown in the session list), bounded
        again here: a service trusts nothing upstream to have done it. Nobody else has one."""
        if message.user_id == self._gateway_user:
            return bounded_user_agent(header_hint(headers, CLIENT_USER_AGENT_HEADER))
        return None

    async def _admit(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> tuple[CommandRoute, Caller | None, Any]:
        """Decide what the message is and who sent it; nothing here touches the database."""
        if not valid_message_id(message.message_id):
            # The contract makes it required: without one a retry could not be told from a new command.
            raise Malformed(BadRequest("Every command needs a message_id of 1 to 200 visible ASCII characters"))
        if message.exchange != COMMANDS_EXCHANGE:
            # Broker permissions cannot stop a service writing to the default exchange (it needs
            # that for replies), which reaches any queue by name: only `commands` is trusted.
            raise Malformed(Unprocessable("A command must be published to the commands exchange"))
        forged = next((h for h in GATEWAY_ONLY_HEADERS if h in headers), None)
        if forged is not None and message.user_id != self._gateway_user:
            # Only the gateway knows where an HTTP client is and what it runs. Ignoring a forged
            # address would still run the command; parking it shows the attempt and lets nothing
            # count against the address it names (another client's lockout) or spread failures
            # over made-up ones, and no session is listed as seen from somewhere it was not.
            raise self._wrong_publisher(
                command_queue_name(self.service),
                Forbidden(f"Only the gateway ({self._gateway_user}) may send {forged}"),
                message.user_id,
            )
        name = message.type or message.routing_key
        if message.type and message.routing_key and message.type != message.routing_key:
            raise Malformed(Unprocessable("The message type does not match its routing key"))
        route = self.commands.get(name or "")
        if route is None:
            raise Malformed(Unprocessable(f"Unknown command {name!r}"))
        if len(message.body) > self._max_bytes:
            raise Malformed(PayloadTooLarge(f"The payload is over {self._max_bytes} bytes"))
        if message.content_type not in (None, "", "application/json"):
            raise Malformed(BadRequest("The content type must be application/json"))
        # The contract's order: decode, validate, then authorize. A malformed message is parked
        # whoever sent it; a well-formed one is refused unless its token verifies.
        try:
            payload = parse_payload(route.payload, message.body)
        except AppError as exc:
            raise Malformed(exc) from None
        caller: Caller | None = None
        if route.policy.needs_token:
            try:
                caller = await self._verifier.verify(bearer_token(_authorization(headers)))
            except AppError as exc:
                await audit.record_alone(self._pool, self._decide("denied", route, None, payload, exc.detail))
                raise
        return route, caller, payload

    async def _hold_through_outage(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `attempt`, waiting out a database outage with backoff while the message stays
        unacked; when shutting down mid-outage, hand the message back instead."""
        delays = Backoff(0.2)
        while True:
            try:
                return await attempt()
            except TRANSIENT_DATABASE_ERRORS as exc:
                if self.stopping:
                    raise _Requeue() from exc
                if lost_the_primary(exc):
                    # Its connections are on a server that takes no writes: new ones find the primary.
                    await discard_connections(self._pool)
                delay = next(delays)
                log.warning(
                    f"database unavailable; holding the {what} and retrying",
                    extra={"error": str(exc) or type(exc).__name__, "retry_in": delay},
                )
                await asyncio.sleep(delay)

    async def _execute_once(self, route: CommandRoute, caller: Caller | None, payload: Any, message: AbstractIncomingMessage) -> Any:
        """One attempt at a command. Each outcome leaves by its own exit: a public read returns
        its result; a replay returns the stored reply; a denial raises from `_open` or
        `_authorize`; anything the handler or `_close` raises rolls back (to the command's
        savepoint when it shares a batch, shared/group_commit.py) and is recorded by
        `_record_after_rollback`; otherwise the result is returned once its transaction committed."""
        if route.reads_only:
            return await self._run_public_read(route, caller, payload)
        command = _Command(route, caller, payload, self._idempotency_key(route, caller, payload, message))
        try:
            return await self._commits.run(lambda conn: self._run_in(conn, command), alone=route.runs_alone)
        except AppError as exc:
            await self._record_after_rollback(command, exc)
            raise

    async def _run_in(self, conn: Connection, command: _Command) -> Any:
        """The command's statements, inside a transaction it may share with others. It runs
        again, alone, if its batch's COMMIT fails (shared/group_commit.py), and decides afresh."""
        route = command.route
        command.decision = None
        with outbox.buffered(conn, route.emits) as events:
            command.opened = await self._open(conn, command)
            if not idempotency.is_new(command.opened.stored):
                return command.opened.stored
            await self._authorize(conn, command)
            result = await route.handler(command.payload, command.caller, conn)
            await self._close(conn, command, result, events.take())
        return result

    def _committed(self) -> None:
        if self._relay is not None:
            self._relay.wake()

    async def _run_public_read(self, route: CommandRoute, caller: Caller | None, payload: Any) -> Any:
        # `check_routes` let it through only as PUBLIC and not replaying: nothing to book.
        async with self._read_pool.acquire() as conn:
            try:
                return await route.handler(payload, caller, conn)
            except asyncpg.ReadOnlySQLTransactionError as exc:
                # On this pool it is the handler writing, a bug: not an outage to wait out.
                raise RuntimeError(f"the public read {route.name!r} tried to write") from exc

    async def _open(self, conn: Connection, command: _Command) -> bookkeeping.Opened:
        """Check the caller's session and ban, claim the message id and, for an owner policy,
        lock the resource and read its owner (one statement). Its `stored` is the reply of an
        earlier run, its replay recorded in this transaction, or `idempotency.UNSET` when the
        command is new."""
        resource = command.route.policy.resource
        owned = bookkeeping.Owned(resource, resource.id_of(command.payload)) if resource is not None else None
        try:
            opened = await bookkeeping.open_command(conn, command.caller, command.key, command.route.name, owned)
        except DENIALS as exc:
            self._deny(command, exc)
            raise
        if not idempotency.is_new(opened.stored):
            command.decision = self._decide("replayed", command.route, command.caller, command.payload, "repeat of an executed message_id")
            if command.audited:
                await audit.record(conn, command.decision)
        return opened

    async def _authorize(self, conn: Connection, command: _Command) -> None:
        """Ask the route's policy; a refusal raises, an allowance waits for the closing statement."""
        route = command.route
        try:
            if command.opened.owner_known:
                route.policy.authorize_owner(command.caller, command.opened.owner)
            else:
                await route.policy.authorize(command.caller, command.payload, conn)
        except DENIALS as exc:
            self._deny(command, exc)
            raise
        if command.audited:
            command.decision = self._decide("allowed", route, command.caller, command.payload, f"policy {route.policy.name}")

    def _deny(self, command: _Command, exc: AppError) -> None:
        if command.audited:
            command.decision = self._decide("denied", command.route, command.caller, command.payload, exc.detail)

    async def _close(self, conn: Connection, command: _Command, result: Any, events: list[outbox.OutboxEvent]) -> None:
        """The reply, the audit row and the events, in one statement before the commit. A runner
        with a relay of its own wakes it after the commit instead of having PostgreSQL notify."""
        await bookkeeping.close_command(conn, command.key, result, command.decision, events, notify=self._relay is None)

    async def _record_after_rollback(self, command: _Command, exc: AppError) -> None:
        """The transaction rolled back, and the audit row with it: write the decision on its own."""
        decision = command.decision
        if decision is None:
            return
        if decision.decision == "allowed":
            decision = decision.followed_by(f"{exc.status} {exc.detail}")
        await audit.record_alone(self._pool, decision)

    def _idempotency_key(
        self, route: CommandRoute, caller: Caller | None, payload: Any, message: AbstractIncomingMessage
    ) -> bookkeeping.Key | None:
        if not route.replays or not message.message_id:
            return None
        payload_print = idempotency.fingerprint(payload)
        if caller is not None:
            return bookkeeping.Key(caller.subject, message.message_id, caller.expires_at, payload_print)
        key = idempotency.anonymous_key(message.message_id, payload_print)
        return bookkeeping.Key(idempotency.ANONYMOUS, key, int(time.time()) + self._anonymous_ttl, payload_print)

    def _decide(
        self, decision: audit.DecisionKind, route: CommandRoute, caller: Caller | None, payload: Any, reason: str
    ) -> audit.Decision:
        self._metrics.decisions.labels(route.name, decision).inc()
        ctx = current_message()
        return audit.decide(
            decision,
            route.name,
            caller,
            payload,
            reason,
            message_id=ctx.message_id if ctx else None,
            request_id=ctx.request_id if ctx else None,
        )

    # -- events -----------------------------------------------------------------------------

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        self._enter()
        key = message.routing_key or ""
        message_id = message.message_id if valid_message_id(message.message_id) else None
        ctx = MessageContext(command=f"event:{key}", message_id=message_id, request_id=request_id_for(None, message_id))
        token = set_current_message(ctx)
        bound = logs.bind(request_id=ctx.request_id, command=ctx.command)
        outcome = "ok"
        try:
            try:
                route = self.events.get(key)
                if message.exchange != EVENTS_EXCHANGE:
                    # Only `events` carries topic permissions on who may publish which key.
                    raise Malformed(Unprocessable("An event must be published to the events exchange"))
                if route is None:
                    raise Malformed(Unprocessable(f"Unknown event {key!r}"))
                owner = self._event_owners[key]
                if message.user_id != owner:
                    # Topic permissions keep other services' users off this key, but not an admin
                    # or a leaked guest: only the owner's `user_id`, which RabbitMQ checks, counts.
                    raise self._wrong_publisher(
                        event_queue_name(self.service),
                        Forbidden(f"A {key!r} event is only accepted from {owner}"),
                        message.user_id,
                    )
                try:
                    event = route.model.model_validate_json(message.body)
                except ValidationError:
                    raise Malformed(Unprocessable(f"Malformed {key!r} event")) from None
                await self._hold_through_outage(lambda: self._apply_event(route, event), "event")
            except Malformed as exc:
                outcome = "wrong_publisher" if isinstance(exc, WrongPublisher) else "malformed"
                await self._dead_letter(message, event_queue_name(self.service), exc.error.detail, command=False)
            except _Requeue:
                outcome = "requeued"
                await message.nack(requeue=True)
            except Exception as exc:
                outcome = "failed"
                log.exception("event handler failed unexpectedly")
                await self._dead_letter(message, event_queue_name(self.service), f"unhandled {type(exc).__name__}", command=False)
            else:
                await message.ack()
        except aio_pika.exceptions.AMQPError:
            outcome = "broker_lost"
        finally:
            self._metrics.events.labels(metric_label(key, EVENTS), outcome).inc()
            logs.unbind(bound)
            reset_current_message(token)
            self._leave()

    async def _apply_event(self, route: EventRoute, event: Any) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            first = await conn.fetchval(
                "INSERT INTO seen_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
                event.event_id,
            )
            if first:
                await route.handler(event, conn)
        if self._relay is not None:
            self._relay.wake()

    def _wrong_publisher(self, queue: str, error: AppError, user_id: str | None) -> WrongPublisher:
        self._metrics.wrong_publisher.labels(queue).inc()
        log.warning("refusing a message from a publisher that may not send it", extra={"publisher": user_id or "-", "queue": queue})
        return WrongPublisher(error)

    # -- replies, dead letters, bookkeeping --------------------------------------------------

    async def _reply(self, message: AbstractIncomingMessage, body: bytes) -> None:
        if not message.reply_to:
            return
        if self._reply_channel is not None:
            try:
                channel = await self._reply_channel.get_underlay_channel()
                await self._publish_reply(channel, message, body)
            except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
                # The effect is committed: the caller, answered 503/504, retries with the same
                # message_id and is answered from the idempotency record. Acking goes on.
                log.warning("could not send the reply; the caller's retry is answered from the record", extra={"error": repr(exc)})
            return
        await self._publish_reply(message.channel, message, body)

    async def _publish_reply(self, channel: Any, message: AbstractIncomingMessage, body: bytes) -> None:
        # Replies to direct reply-to must not be mandatory: RabbitMQ would both deliver and return them.
        await channel.basic_publish(
            body,
            exchange="",
            routing_key=message.reply_to,
            properties=aio_pika.Message(
                b"", content_type="application/json", correlation_id=message.correlation_id, user_id=self._user_id
            ).properties,
            mandatory=False,
        )

    async def _dead_letter(
        self, message: AbstractIncomingMessage, queue: str, reason: str, *, command: bool, reply: bytes | None = None
    ) -> None:
        """Park the message in `<queue>.dead` with the reason, send `reply` (a command's error),
        then ack it. Nothing parked keeps a credential: the authorization header always goes, and
        a command's secret fields too. The reply follows the park, so a caller who has it knows
        the message is parked (or, the queue being full, counted as dropped): one after another,
        a sender's malformed commands are parked one at a time."""
        self._metrics.dead_lettered.labels(queue).inc()
        log.warning("dead-lettering a message", extra={"reason": reason, "queue": queue})
        headers, taken = redact_headers(message.headers or {})
        body = message.body
        if command:
            body, fields = redact_body(body, (message.type, message.routing_key), max_bytes=self._max_bytes)
            taken += fields
        if taken:
            headers[REDACTED_HEADER] = ", ".join(taken)
        headers.update(
            {
                "x-dead-letter-reason": reason,
                "x-original-exchange": message.exchange or "",
                "x-original-routing-key": message.routing_key or "",
                # Parking republishes it as this service: who really sent it is kept here.
                "x-original-user-id": message.user_id or "",
            }
        )
        parked = aio_pika.Message(
            body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            correlation_id=message.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=self._user_id,
        )
        channel = self._dead_letter_channel
        requeue = False  # set when the park fails: the message goes back to be parked on redelivery
        try:
            if channel is None:
                raise RuntimeError("no dead-letter channel")
            try:
                await _park(channel, parked, queue)
            except aio_pika.exceptions.DeliveryError:
                # A nack is a full `<queue>.dead` as a rule, but a channel can also be refused for
                # good (shared/channels.py): once more on a new channel before the message is
                # taken for one too many.
                fresh = await self._fresh_dead_letter_channel(channel)
                if fresh is None:
                    raise
                await _park(fresh, parked, queue)
        except aio_pika.exceptions.DeliveryError:
            # The broker refused it: `<queue>.dead` is full (it rejects new messages rather than
            # dropping old ones, see shared/broker.py). Retrying would loop until an operator
            # empties it, so the message is dropped, and said so.
            self._metrics.dead_letters_dropped.labels(queue).inc()
            log.warning("the dead-letter queue is full; dropping the message", extra={"reason": reason, "queue": queue})
        except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError):
            # Not parked yet: hand it back and try again on redelivery. Rejecting it instead would
            # let RabbitMQ park the original, credential and all.
            log.warning("could not park the message; it will be redelivered")
            requeue = True
        if reply is not None:
            await self._reply(message, reply)  # after the park; when it failed, the caller learns all the same
        if requeue:
            await asyncio.sleep(1)
            await message.nack(requeue=True)
        else:
            await message.ack()

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every message in flight finished within `timeout` seconds."""
        return await wait_for_event(self._idle, timeout)


async def _park(channel: AbstractChannel, parked: aio_pika.Message, queue: str) -> None:
    """Publish `parked` to `<queue>.dead` and wait for the broker's confirm (DeliveryError on a nack)."""
    exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE, ensure=False)
    await exchange.publish(parked, routing_key=queue, mandatory=False)
