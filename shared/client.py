"""Sending a command and waiting for its reply: RPC over RabbitMQ direct reply-to.

The gateway uses this, and so can any internal service holding a service token. Commands are
published persistent, with publisher confirms and `mandatory`, so a command no queue would take is
an immediate 503 rather than silence; every call has a timeout (504). Replies arrive on the
pseudo-queue `amq.rabbitmq.reply-to` of the same channel and are matched by correlation id.
Payloads are JSON, never pickle; a remote error comes back as the same `AppError` it was.
With `topology="verify"` the client only checks that `commands` exists (shared/topology), so its
broker user needs nothing but write on `commands`. Every command carries `user_id`, the
connection's user: RabbitMQ checks it, and services believe `x-client-address` only from the
gateway's.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage

from shared import jsoncodec
from shared.broker import COMMANDS_EXCHANGE
from shared.envelope import build_command
from shared.errors import GatewayTimeout, InternalError, ServiceUnavailable, error_from_dict
from shared.settings import BrokerTopology
from shared.topology import TopologyError, open_exchange

REPLY_QUEUE = "amq.rabbitmq.reply-to"


class CommandClient:
    """Sends commands and awaits replies. One per process; safe for concurrent calls."""

    def __init__(self, connection: AbstractConnection, *, user_id: str, timeout: float, topology: BrokerTopology = "declare") -> None:
        self._connection = connection
        self._user_id = user_id
        self._timeout = timeout
        self._topology: BrokerTopology = topology
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        await self._open()
        # A robust connection restores its channels after a broker restart, but not the consumer
        # of the direct reply-to pseudo-queue, so the client reopens its own channel instead.
        reconnect = getattr(self._connection, "reconnect_callbacks", None)
        if reconnect is not None:
            reconnect.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_connection_lost)

    async def _open(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await open_exchange(channel, COMMANDS_EXCHANGE, self._topology)
        reply_queue = await channel.get_queue(REPLY_QUEUE, ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self._channel, self._exchange = channel, exchange

    async def _on_reconnect(self, *_: Any) -> None:
        stale = self._channel
        self._channel = None
        if stale is not None and not stale.is_closed:
            await stale.close()
        try:
            await self._open()
        except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, TopologyError):
            pass  # the connection will call us again on its next successful reconnect

    def _on_connection_lost(self, *_: Any) -> None:
        # Replies to calls in flight would have come to the consumer that just died: answer
        # their callers now rather than after the timeout.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable("Lost the connection to the message broker", retry_after=5))

    async def close(self) -> None:
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
        return self._channel is not None and not self._channel.is_closed and not self._connection.is_closed

    async def call(
        self,
        command: str,
        payload: dict[str, Any],
        *,
        token: str | None = None,
        message_id: str | None = None,
        request_id: str | None = None,
        client_address: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send `command` and return its result, or raise the AppError the service replied with."""
        if self._exchange is None or not self.ready:
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
            user_id=self._user_id,
        )
        try:
            try:
                await asyncio.wait_for(self._exchange.publish(message, routing_key=command, mandatory=True), timeout)
            except aio_pika.exceptions.PublishError:
                raise ServiceUnavailable(f"No service is accepting {command!r} commands", retry_after=5) from None
            except (aio_pika.exceptions.AMQPError, ConnectionError, TimeoutError, RuntimeError):
                raise ServiceUnavailable("The message broker is unavailable", retry_after=5) from None
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise GatewayTimeout(f"The {command!r} command got no reply within {timeout:g} s") from None
        finally:
            self._pending.pop(correlation_id, None)

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
