"""The command client across a broker reconnect, with a fake connection: every way a publish can
fail while the broker goes and comes back is a 503, never a 500, and nothing is published on the
channel the robust connection restores without its reply consumer.

These reproduce, without a broker, what one run in ten of the RabbitMQ restart test showed: a
publish that raced the client's channel swap was failed by aiormq with a bare `Exception` (its
pending confirm rejected when the channel was closed with no reason given), which the gateway
answered 500.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic

from shared.client import CommandClient
from shared.errors import ServiceUnavailable

pytestmark = pytest.mark.unit


class Callbacks(set[Any]):
    """aio-pika's CallbackCollection, as far as the client uses it."""

    def fire(self, *args: Any, sender: Any = None) -> list[Any]:
        return [callback(sender, *args) for callback in list(self)]


class FakeQueue:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def consume(self, callback: Any, *, no_ack: bool) -> str:
        self.channel.consuming = True
        self.channel.on_reply = callback
        return "ctag"


@dataclass
class Reply:
    """A reply as the direct reply-to consumer is handed it."""

    correlation_id: str
    body: bytes = b'{"ok": true, "result": {"id": "p1"}}'


class FakeExchange:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def publish(self, message: Any, *, routing_key: str, mandatory: bool) -> None:
        self.channel.published.append(routing_key)
        self.channel.correlation_ids.append(message.correlation_id)
        if self.channel.publish_error is not None:
            raise self.channel.publish_error
        if self.channel.hold is not None:
            await self.channel.hold


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed = False
        self.close_callbacks = Callbacks()
        self.consuming = False
        self.published: list[str] = []
        self.correlation_ids: list[str] = []
        self.on_reply: Any = None
        self.publish_error: BaseException | None = None
        self.hold: asyncio.Future[None] | None = None

    async def declare_exchange(self, name: str, *args: Any, **kwargs: Any) -> FakeExchange:
        return FakeExchange(self)

    async def get_exchange(self, name: str, *, ensure: bool = True) -> FakeExchange:
        return FakeExchange(self)

    async def get_queue(self, name: str, *, ensure: bool = True) -> FakeQueue:
        return FakeQueue(self)

    async def close(self) -> None:
        self.is_closed = True
        if self.hold is not None and not self.hold.done():
            # What aiormq's FutureStore.reject_all(None) does to a pending confirm.
            self.hold.set_exception(Exception)


class FakeConnection:
    def __init__(self) -> None:
        self.is_closed = False
        self.channels: list[FakeChannel] = []
        self.reconnect_callbacks = Callbacks()
        self.close_callbacks = Callbacks()

    def channel(self, **kwargs: Any) -> Any:
        async def opened() -> FakeChannel:
            self.channels.append(FakeChannel())
            return self.channels[-1]

        return opened()

    def lose(self) -> None:
        for channel in self.channels:
            channel.is_closed = True
        self.close_callbacks.fire(ConnectionResetError())

    def restore_channels(self) -> None:
        """A robust connection reopens its channels (consumers not included) before it calls back."""
        for channel in self.channels:
            if channel.is_closed:
                channel.is_closed, channel.consuming = False, False

    async def come_back(self) -> None:
        self.restore_channels()
        self.reconnect_callbacks.fire()
        await settle()


async def settle() -> None:
    """Let the tasks the client started run as far as they can."""
    for _ in range(10):
        await asyncio.sleep(0)


async def started() -> tuple[FakeConnection, CommandClient]:
    connection = FakeConnection()
    client = CommandClient(connection, user_id="gateway", timeout=1)  # type: ignore[arg-type]
    await client.start()
    return connection, client


async def test_nothing_is_published_on_the_channel_restored_without_its_reply_consumer() -> None:
    connection, client = await started()
    first = connection.channels[0]
    connection.lose()
    connection.restore_channels()  # the robust connection has reopened `first`, not yet called back
    assert not first.is_closed and not first.consuming
    with pytest.raises(ServiceUnavailable):
        await client.call("create-post", {"title": "t", "body": "b"})
    assert first.published == []
    assert not client.ready

    connection.reconnect_callbacks.fire()
    await settle()
    second = connection.channels[-1]
    assert second is not first and second.consuming and first.is_closed
    assert client.ready
    await client.close()


async def test_a_publish_failed_by_its_channel_closing_under_it_is_a_503() -> None:
    """The race itself: a publish awaiting its confirm when the channel is closed without a
    reason (aiormq rejects the confirm with a bare Exception)."""
    connection, client = await started()
    channel = connection.channels[0]
    channel.hold = asyncio.get_running_loop().create_future()
    call = asyncio.create_task(client.call("create-post", {"title": "t", "body": "b"}))
    await settle()
    assert channel.published == ["create-post"]
    await channel.close()
    with pytest.raises(ServiceUnavailable) as raised:
        await call
    assert raised.value.status == 503
    await client.close()


@pytest.mark.parametrize(
    "error",
    [
        aiormq.exceptions.ChannelInvalidStateError("closed"),
        aiormq.exceptions.ChannelPreconditionFailed("fast reply consumer does not exist"),
        aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
        ConnectionResetError(),
        RuntimeError("No active transport"),
        TimeoutError(),
        Exception(),
        asyncio.CancelledError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_every_way_a_publish_fails_mid_reconnect_is_a_503(error: BaseException) -> None:
    connection, client = await started()
    connection.channels[0].publish_error = error
    with pytest.raises(ServiceUnavailable) as raised:
        await client.call("create-post", {"title": "t", "body": "b"})
    assert raised.value.status == 503 and raised.value.retry_after
    await client.close()


async def test_the_callers_own_cancellation_is_not_turned_into_a_503() -> None:
    connection, client = await started()
    connection.channels[0].hold = asyncio.get_running_loop().create_future()
    call = asyncio.create_task(client.call("create-post", {"title": "t", "body": "b"}))
    await settle()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await client.close()


async def test_a_channel_opened_across_a_second_loss_is_not_used() -> None:
    connection, client = await started()
    connection.lose()
    opening = connection.channel

    def channel_lost_while_opening(**kwargs: Any) -> Any:
        connection.lose()  # the broker goes again while the new channel opens
        return opening(**kwargs)

    connection.channel = channel_lost_while_opening  # type: ignore[method-assign]
    await connection.come_back()
    assert not client.ready
    connection.channel = opening  # type: ignore[method-assign]
    await connection.come_back()
    assert client.ready and connection.channels[-1].consuming
    await client.close()


async def test_a_call_failing_to_publish_as_the_connection_drops_leaves_no_unretrieved_future() -> None:
    """The loss fails the call's reply future while its publish is still failing: the future is
    read, so asyncio does not log "Future exception was never retrieved" at ERROR."""
    connection, client = await started()
    channel = connection.channels[0]
    channel.hold = asyncio.get_running_loop().create_future()
    call = asyncio.create_task(client.call("create-post", {"title": "t", "body": "b"}))
    await settle()
    [future] = client._pending.values()
    connection.lose()  # fails the reply future
    channel.hold.set_exception(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"))
    with pytest.raises(ServiceUnavailable):
        await call
    assert future.done() and future._log_traceback is False
    await client.close()


async def test_a_channel_the_broker_closes_alone_is_replaced() -> None:
    """A channel-level error (the broker refusing a publish) closes the channel but not the
    connection: no reconnect callback comes, and the robust channel reopens without the reply
    consumer. The client stops using it, answers the calls waiting on it, and opens another."""
    connection, client = await started()
    first = connection.channels[0]
    first.hold = asyncio.get_running_loop().create_future()
    call = asyncio.create_task(client.call("create-post", {"title": "t", "body": "b"}))
    await settle()
    first.hold.set_result(None)  # the publish is confirmed; the call waits for its reply
    await settle()
    first.is_closed = True
    first.close_callbacks.fire(aiormq.exceptions.ChannelPreconditionFailed("refused"), sender=first)
    first.is_closed, first.consuming = False, False  # aio-pika reopens it, consumer not included
    assert not client.ready
    with pytest.raises(ServiceUnavailable):
        await call
    await settle()
    second = connection.channels[-1]
    assert second is not first and second.consuming and first.is_closed
    assert client.ready
    await client.close()


NACK = aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1))


async def test_a_nack_is_a_503_and_the_client_publishes_on_a_new_channel() -> None:
    """A channel the broker refuses for good (RabbitMQ 3.10 nacked every publish on the gateway's
    channel after a quorum queue's leader moved, and acked a new channel at once): the refused
    call is a 503 to retry, the next call goes out on a new channel, and a call that was waiting
    for its reply on the old channel still gets it there before the old channel is closed."""
    connection, client = await started()
    first = connection.channels[0]
    first.hold = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(client.call("get-post", {"post_id": "p1"}))
    await settle()
    first.hold.set_result(None)  # confirmed; it waits for its reply
    first.hold, first.publish_error = None, NACK
    with pytest.raises(ServiceUnavailable) as raised:
        await client.call("create-post", {"title": "t", "body": "b"})
    assert raised.value.status == 503 and raised.value.retry_after == 1
    await settle()
    second = connection.channels[-1]
    assert second is not first and second.consuming and client.renewals == 1
    assert not first.is_closed, "the old channel is kept while replies may still come to it"

    await first.on_reply(Reply(first.correlation_ids[0]))
    assert await waiting == {"id": "p1"}
    call = asyncio.create_task(client.call("create-post", {"title": "t", "body": "b"}))
    await settle()
    assert second.published == ["create-post"]
    await second.on_reply(Reply(second.correlation_ids[0]))
    assert await call == {"id": "p1"}
    await asyncio.sleep(1.1)  # the client's timeout: every call on the old channel is over
    assert first.is_closed
    await client.close()


async def test_nacks_in_a_row_renew_the_channel_at_most_once_a_second() -> None:
    """While the broker refuses everything (a queue with no leader yet), the client does not open
    a channel per refused command."""
    connection, client = await started()
    connection.channels[0].publish_error = NACK
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            await client.call("create-post", {"title": "t", "body": "b"})
        await settle()
        connection.channels[-1].publish_error = NACK  # the new channel is refused too
    assert len(connection.channels) == 2 and client.renewals == 1
    await asyncio.sleep(1.05)
    with pytest.raises(ServiceUnavailable):
        await client.call("create-post", {"title": "t", "body": "b"})
    await settle()
    assert len(connection.channels) == 3 and client.renewals == 2
    await client.close()
    assert all(channel.is_closed for channel in connection.channels)


async def test_a_reconnect_during_a_renewal_leaves_one_channel_in_use() -> None:
    connection, client = await started()
    first = connection.channels[0]
    first.publish_error = NACK
    with pytest.raises(ServiceUnavailable):
        await client.call("create-post", {"title": "t", "body": "b"})
    await settle()
    renewed = connection.channels[-1]
    connection.lose()
    await connection.come_back()
    assert first.is_closed and renewed.is_closed, "what the renewal retired and what the reconnect replaced are closed"
    latest = connection.channels[-1]
    assert client.ready and latest.consuming and not latest.is_closed
    await client.close()
