"""Sending a command and waiting for its reply: RPC over RabbitMQ direct reply-to.

The gateway uses this, and so can any internal service holding a service token. Commands are
published persistent, with publisher confirms and `mandatory`, so a command no queue would take is
an immediate 503 rather than silence; every call has a timeout (504). Replies arrive on the
pseudo-queue `amq.rabbitmq.reply-to` of the same channel and are matched by correlation id.
Payloads are JSON, never pickle; a remote error comes back as the same `AppError` it was.

Losing the broker is always a 503 (or a 504 when no reply came), never a 500. From the moment
the connection drops until a fresh channel with its reply consumer is open, nothing is published
(see `_on_connection_lost`); and whatever a publish raises, it means the command may or may not
have reached the broker, which a retry with the same `message_id` settles (see `call`).
With `topology="verify"` the client only checks that `commands` exists (shared/topology), so its
broker user needs nothing but write on `commands`. Every command carries `user_id`, the
connection's user: RabbitMQ checks it, and services believe `x-client-address` only from the
gateway's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import uuid4

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

from shared import jsoncodec
from shared.broker import COMMANDS_EXCHANGE, login_user
from shared.channels import RENEW_SECONDS, close_quietly
from shared.envelope import build_command
from shared.errors import GatewayTimeout, InternalError, ServiceUnavailable, error_from_dict
from shared.pacing import Backoff
from shared.settings import BrokerTopology
from shared.topology import TopologyError, open_exchange

log = logging.getLogger(__name__)

REPLY_QUEUE = "amq.rabbitmq.reply-to"
#: What opening a channel can raise while the broker is still settling after a reconnect.
_REOPEN_ERRORS = (aio_pika.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError, TopologyError)
#: How long one attempt at reopening the channel may take.
_REOPEN_SECONDS = 10.0


class CommandClient:
    """Sends commands and awaits replies. One per process; safe for concurrent calls."""

    def __init__(
        self, connection: AbstractConnection, *, timeout: float, topology: BrokerTopology = "declare", user_id: str | None = None
    ) -> None:
        self._connection = connection
        # RabbitMQ accepts no user_id but the connection's own user, so that is the default (the
        # abstract connection type does not declare the `url` every aio-pika connection has).
        self._user_id = user_id if user_id is not None else login_user(str(getattr(connection, "url", "")))
        self._timeout = timeout
        self._topology: BrokerTopology = topology
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._channel: AbstractChannel | None = None
        #: None while there is no channel fit to publish on (before start, and between losing the
        #: broker and `_reopen` opening the next channel).
        self._exchange: AbstractExchange | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._closing = False
        #: Counts connection losses: a channel opened across one is not used.
        self._losses = 0
        #: Replacing a channel the broker nacked (`_renew`), and when it may be done again.
        self._renewing: asyncio.Task[None] | None = None
        self._next_renewal = 0.0
        #: How many times a nack made the client publish on a new channel.
        self.renewals = 0

    async def start(self) -> None:
        await self._open()
        # A robust connection restores its channels after a broker restart, but not the consumer
        # of the direct reply-to pseudo-queue, so the client opens a channel of its own instead.
        reconnect = getattr(self._connection, "reconnect_callbacks", None)
        if reconnect is not None:
            reconnect.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_connection_lost)

    async def _open(self) -> None:
        losses = self._losses
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await open_exchange(channel, COMMANDS_EXCHANGE, self._topology)
            reply_queue = await channel.get_queue(REPLY_QUEUE, ensure=False)
            await reply_queue.consume(self._on_reply, no_ack=True)
            if losses != self._losses:
                # The broker went away while we opened it: it would come back without its
                # consumer, like any channel a robust connection restores.
                raise aio_pika.exceptions.ChannelInvalidStateError("the connection was lost while the channel opened")
        except BaseException:
            await close_quietly(channel)
            raise
        channel.close_callbacks.add(self._on_channel_closed)
        self._channel, self._exchange = channel, exchange

    def _on_reconnect(self, *_: Any) -> None:
        # Not awaited by the connection: it runs its reconnect callbacks inside its own reconnect,
        # and a channel opened from one would wait for that reconnect to finish.
        for task in (self._reopening, self._renewing):
            if task is not None:
                task.cancel()  # a renewal closes the channel it retires as it goes
        self._reopening = asyncio.create_task(self._reopen(), name="command-client-reopen")

    async def _reopen(self) -> None:
        """A fresh channel with its reply consumer, then the old one closed; tried until it works."""
        self._exchange = None  # `_on_connection_lost` did this already, unless the loss went unseen
        stale = self._channel
        delays = Backoff(0.5)
        while not self._closing and not self._connection.is_closed:
            try:
                async with asyncio.timeout(_REOPEN_SECONDS):
                    await self._open()
                break
            except _REOPEN_ERRORS as exc:
                delay = next(delays)
                log.warning(
                    "could not reopen the command channel; retrying", extra={"error": str(exc) or type(exc).__name__, "retry_in": delay}
                )
                await asyncio.sleep(delay)
        # Nothing publishes on the old channel any more (the robust connection has reopened it,
        # without the reply consumer): close it, or it would be restored on every reconnect.
        if stale is not None and stale is not self._channel:
            await close_quietly(stale)

    def _on_nack(self, channel: AbstractChannel) -> None:
        """The broker refused a command on `channel` (a nack): publish on a new channel, at most
        once a `RENEW_SECONDS`. A command queue holds no limit, so a nack means the broker could not
        take the command: usually that passes (a quorum queue electing a leader), but a channel can
        also stay refused for good (shared/channels.py)."""
        busy = [task for task in (self._reopening, self._renewing) if task is not None and not task.done()]
        if channel is not self._channel or self._closing or busy:
            return
        now = asyncio.get_running_loop().time()
        if now < self._next_renewal:
            return
        self._next_renewal = now + RENEW_SECONDS
        self._renewing = asyncio.create_task(self._renew(channel), name="command-client-renew")

    async def _renew(self, stale: AbstractChannel) -> None:
        """Open a new channel to publish on, then close `stale` once the calls published on it
        have had their time: their replies come to its consumer."""
        try:
            try:
                async with asyncio.timeout(_REOPEN_SECONDS):
                    await self._open()
            except _REOPEN_ERRORS as exc:
                # The old channel stays in use; the next nack tries again (or a reconnect reopens).
                log.warning("could not renew the command channel", extra={"error": str(exc) or type(exc).__name__})
                return
            self.renewals += 1
            log.warning("the broker refused a command; publishing on a new channel")
            await asyncio.sleep(self._timeout)
        finally:
            if stale is not self._channel:
                await close_quietly(stale)

    def _on_channel_closed(self, channel: Any, reason: BaseException | None = None, *_: Any) -> None:
        if channel is not self._channel or self._closing:
            return  # a channel we have done with, or our own shutdown
        # Losing the connection closes the channel too, and `_on_connection_lost` and
        # `_on_reconnect` see to that. But the broker can close the channel alone (a publish it
        # refuses, such as a wrong user_id), and then no reconnect callback comes: the robust
        # channel reopens itself without the reply consumer, and every later call on it would be
        # refused. Treat it as a loss of its own.
        self._lose("Lost the channel to the message broker")
        if isinstance(reason, aio_pika.exceptions.AMQPChannelError):
            self._on_reconnect()

    def _on_connection_lost(self, *_: Any) -> None:
        # Publish nothing until `_reopen` has a new channel. The robust connection reopens the old
        # one *before* it calls `_on_reconnect`, without the reply consumer: a command published
        # on it in between is refused by the broker (PRECONDITION_FAILED), or fails when `_reopen`
        # closes that channel under it (aiormq then fails the pending confirm with a bare
        # `Exception`), and before this was so, that answered a 500.
        self._lose("Lost the connection to the message broker")

    def _lose(self, detail: str) -> None:
        self._exchange = None
        self._losses += 1
        # Replies to calls in flight would have come to the consumer that just died: answer
        # their callers now rather than after the timeout.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable(detail, retry_after=5))

    async def close(self) -> None:
        self._closing = True
        self._exchange = None
        tasks = [task for task in (self._reopening, self._renewing) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("The gateway is shutting down"))
        reconnect = getattr(self._connection, "reconnect_callbacks", None)
        if reconnect is not None:
            reconnect.discard(self._on_reconnect)
        self._connection.close_callbacks.discard(self._on_connection_lost)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    @property
    def ready(self) -> bool:
        return self._exchange is not None and self._channel is not None and not self._channel.is_closed and not self._connection.is_closed

    async def call(
        self,
        command: str,
        payload: dict[str, Any],
        *,
        token: str | None = None,
        message_id: str | None = None,
        request_id: str | None = None,
        client_address: str | None = None,
        client_user_agent: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send `command` and return its result, or raise the AppError the service replied with."""
        exchange, channel = self._exchange, self._channel
        if exchange is None or channel is None or not self.ready:
            raise ServiceUnavailable("The message broker is unavailable", retry_after=5)
        correlation_id = uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        timeout = self._timeout if timeout is None else timeout
        message = build_command(
            command,
            payload,
            token=token,
            message_id=message_id,
            reply_to=REPLY_QUEUE,
            correlation_id=correlation_id,
            request_id=request_id,
            client_address=client_address,
            client_user_agent=client_user_agent,
            user_id=self._user_id,
        )
        try:
            try:
                await asyncio.wait_for(exchange.publish(message, routing_key=command, mandatory=True), timeout)
            except aio_pika.exceptions.PublishError:
                raise ServiceUnavailable(f"No service is accepting {command!r} commands", retry_after=5) from None
            except aio_pika.exceptions.DeliveryError:
                # A nack: the broker did not take the command (see `_on_nack`).
                self._on_nack(channel)
                raise ServiceUnavailable(f"The message broker did not take the {command!r} command", retry_after=1) from None
            except asyncio.CancelledError:
                if _cancelled_from_outside():
                    raise  # the caller went away, or we are shutting down
                # aiormq fails a pending confirm with CancelledError when its channel is closed
                # with no reason given (a robust connection closing it to reopen it, say).
                raise ServiceUnavailable("The message broker is unavailable", retry_after=5) from None
            except Exception as exc:
                # The publish ran into the broker going away: an AMQPError, ConnectionError,
                # TimeoutError or RuntimeError as a rule, but a channel closed under a pending
                # confirm fails it with a bare `Exception`. Either way the command may or may not
                # have reached a queue, and a retry with the same message_id is what settles it:
                # a 503, never a 500. Logged, so an unexpected kind still shows.
                if not isinstance(exc, aio_pika.exceptions.AMQPError | ConnectionError | TimeoutError | RuntimeError):
                    log.warning("a publish failed in an unexpected way", extra={"error": repr(exc)})
                raise ServiceUnavailable("The message broker is unavailable", retry_after=5) from None
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise GatewayTimeout(f"The {command!r} command got no reply within {timeout:g} s") from None
        finally:
            self._pending.pop(correlation_id, None)
            if future.done() and not future.cancelled():
                # `_on_connection_lost` may have failed it while the publish was still failing:
                # read it, or asyncio logs "Future exception was never retrieved" at ERROR.
                future.exception()
            else:
                future.cancel()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            return  # a reply that came after its caller gave up
        try:
            reply = jsoncodec.loads(message.body)
        except ValueError:
            future.set_exception(InternalError("The service sent an unreadable reply"))
            return
        if isinstance(reply, dict) and reply.get("ok") is True:
            future.set_result(reply.get("result"))
        elif isinstance(reply, dict) and reply.get("ok") is False:
            future.set_exception(error_from_dict(reply.get("error")))
        else:
            future.set_exception(InternalError("The service sent an unreadable reply"))


def _cancelled_from_outside() -> bool:
    """Whether the current task is being cancelled (by `task.cancel()`), as opposed to a
    CancelledError raised out of a future the broker library cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
