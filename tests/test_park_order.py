"""The order in which a command that cannot run is set aside: park, then reply, then settle.

A caller who has the error reply of a malformed or crashing command knows it is parked in
`<queue>.dead` (or counted as dropped, the queue being full): the reply follows the park's
confirm. When the park fails (the broker is going away), the caller is still answered at once,
and the message goes back on its queue to be parked on redelivery. The broker's side of this is
tests/test_dead_letters.py and tests/test_dead_letter_bounds.py; this pins the order.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from pamqp import commands

from shared.runner import MessageProcessor
from tests.support.runner import bare_processor

pytestmark = pytest.mark.unit


class FakeMessage:
    """A delivered command, recording how it was settled."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.headers: dict[str, Any] = {"authorization": "Bearer secret"}
        self.body = b'{"post_id": "x"}'
        self.type = self.routing_key = "get-post"
        self.exchange, self.user_id, self.content_type = "commands", "gateway", "application/json"
        self.message_id, self.correlation_id, self.reply_to = "m-1", "c-1", "amq.rabbitmq.reply-to"

    async def ack(self) -> None:
        self.steps.append("ack")

    async def nack(self, requeue: bool) -> None:
        self.steps.append(f"nack requeue={requeue}")


class FakeExchange:
    def __init__(self, steps: list[str], refuse: bool) -> None:
        self.steps, self.refuse = steps, refuse

    async def publish(self, message: aio_pika.Message, routing_key: str, mandatory: bool) -> None:
        self.steps.append(f"park to {routing_key}")
        assert "secret" not in str(message.headers)  # parked without the token
        if self.refuse:  # the dead-letter queue is full: the broker nacks the publish
            raise aio_pika.exceptions.DeliveryError(None, commands.Basic.Nack())


class FakeChannel:
    def __init__(self, exchange: FakeExchange) -> None:
        self.exchange = exchange
        self.closed = False

    async def get_exchange(self, name: str, ensure: bool) -> FakeExchange:
        return self.exchange

    async def close(self) -> None:
        self.closed = True


def processor(steps: list[str], monkeypatch: pytest.MonkeyPatch, channel: FakeChannel | None) -> MessageProcessor:
    runner = bare_processor()
    if channel is not None:
        runner.attach_dead_letter_channel(channel)  # type: ignore[arg-type]

    async def reply(message: Any, body: bytes) -> None:
        steps.append(f"reply {body.decode()}")

    async def no_wait(_: float) -> None:
        return None

    monkeypatch.setattr(runner, "_reply", reply)
    monkeypatch.setattr("shared.runner.asyncio.sleep", no_wait)
    return runner


async def park(runner: MessageProcessor, steps: list[str]) -> None:
    await runner._dead_letter(FakeMessage(steps), "posts.commands", "422 malformed", command=True, reply=b"refused")  # type: ignore[arg-type]


async def test_the_reply_follows_the_park_and_the_ack_follows_the_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    await park(processor(steps, monkeypatch, FakeChannel(FakeExchange(steps, refuse=False))), steps)
    assert steps == ["park to posts.commands", "reply refused", "ack"]


async def test_a_full_dead_letter_queue_drops_then_replies_and_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    runner = processor(steps, monkeypatch, FakeChannel(FakeExchange(steps, refuse=True)))
    await park(runner, steps)
    assert steps == ["park to posts.commands", "reply refused", "ack"]
    assert runner._metrics.registry.get_sample_value("dead_letters_dropped_total", {"queue": "posts.commands"}) == 1


async def test_a_park_that_fails_still_answers_then_hands_the_message_back(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    await park(processor(steps, monkeypatch, None), steps)  # no dead-letter channel: the park fails
    assert steps == ["reply refused", "nack requeue=True"]


async def test_a_nacked_park_is_tried_once_more_on_a_new_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel can be refused for good while the dead-letter queue has room (RabbitMQ 3.10 after
    a quorum queue's leader moved): the park goes out on a new channel, and nothing is dropped."""
    steps: list[str] = []
    refused = FakeChannel(FakeExchange(steps, refuse=True))
    runner = processor(steps, monkeypatch, None)
    opened: list[FakeChannel] = []

    async def renew() -> Any:
        steps.append("new channel")
        opened.append(FakeChannel(FakeExchange(steps, refuse=False)))
        return opened[-1]

    runner.attach_dead_letter_channel(refused, renew=renew)  # type: ignore[arg-type]
    await park(runner, steps)
    assert steps == ["park to posts.commands", "new channel", "park to posts.commands", "reply refused", "ack"]
    assert runner._metrics.registry.get_sample_value("dead_letters_dropped_total", {"queue": "posts.commands"}) is None
    steps.clear()
    await park(runner, steps)  # the next park goes straight to the new channel
    assert steps == ["park to posts.commands", "reply refused", "ack"]


async def test_a_full_dead_letter_queue_costs_at_most_one_new_channel_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    runner = processor(steps, monkeypatch, None)
    opened: list[FakeChannel] = []

    async def renew() -> Any:
        opened.append(FakeChannel(FakeExchange(steps, refuse=True)))  # full: the new channel is refused too
        return opened[-1]

    first = FakeChannel(FakeExchange(steps, refuse=True))
    runner.attach_dead_letter_channel(first, renew=renew)  # type: ignore[arg-type]
    for _ in range(5):
        await park(runner, steps)
    assert len(opened) == 1 and not first.closed, "the refused channel is closed at the next renewal, not under other parks"
    assert runner._metrics.registry.get_sample_value("dead_letters_dropped_total", {"queue": "posts.commands"}) == 5
    assert steps.count("ack") == 5
