"""Dead-letter queues are bounded, and a full one costs a dropped message, never the service.

Every `<queue>.dead` carries `x-max-length`, `x-max-length-bytes` and `x-overflow: reject-publish`
(shared/broker.py says why reject rather than drop-head). When it is full, the runner's parking
publish is nacked: the runner logs it, counts it in `dead_letters_dropped_total{queue}`, acks the
original and keeps serving, instead of retrying forever.

The real bound (thousands of messages) would be slow to reach, so the test swaps posts'
dead-letter queue for one bounded at three messages, with the same overflow rule, and puts the
real one back afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from shared.broker import DEAD_LETTER_EXCHANGE, DEAD_LETTER_OVERFLOW, dead_letter_queue_name
from shared.declarations import SERVICE_NAMES
from shared.topology import DEAD_LETTER_QUEUE_ARGUMENTS, queues
from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.metrics import metric
from tests.support.stack import Stack

QUEUE = "posts.commands"
TINY = 3


def test_every_dead_letter_queue_is_bounded() -> None:
    dead = [q for s in SERVICE_NAMES for q in queues(s) if q.name.endswith(".dead")]
    assert len(dead) == 2 * len(SERVICE_NAMES)
    for queue in dead:
        assert queue.arguments == DEAD_LETTER_QUEUE_ARGUMENTS, queue
    assert DEAD_LETTER_QUEUE_ARGUMENTS["x-max-length"] > 0 and DEAD_LETTER_QUEUE_ARGUMENTS["x-max-length-bytes"] > 0
    assert DEAD_LETTER_QUEUE_ARGUMENTS["x-overflow"] == "reject-publish"


async def redeclare(broker: BrokerProbe, arguments: dict[str, Any]) -> None:
    name = dead_letter_queue_name(QUEUE)
    channel = await broker.open_channel()
    try:
        await channel.queue_delete(name)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(DEAD_LETTER_EXCHANGE, routing_key=QUEUE)
    finally:
        await channel.close()


@pytest.fixture
async def tiny_dead_letter_queue(broker: BrokerProbe) -> AsyncIterator[None]:
    await redeclare(broker, {**DEAD_LETTER_QUEUE_ARGUMENTS, "x-max-length": TINY, "x-overflow": DEAD_LETTER_OVERFLOW})
    yield
    await redeclare(broker, DEAD_LETTER_QUEUE_ARGUMENTS)


async def dropped(stack: Stack) -> float:
    return await metric(stack.http_url("posts"), "dead_letters_dropped_total", queue="posts.commands")


async def test_a_full_dead_letter_queue_drops_counts_and_keeps_serving(
    broker: BrokerProbe, stack: Stack, wait_until: WaitUntil, tiny_dead_letter_queue: None
) -> None:
    before = await dropped(stack)
    sent = 12
    for _ in range(sent):  # malformed: the type is not the routing key's, so each is parked
        reply = await broker.command("get-post", {"post_id": str(uuid4())}, message_type="delete-post")
        assert reply is not None and reply["error"]["status"] == 422, reply

    channel = await broker.open_channel()

    async def depth() -> int:
        dead = await channel.declare_queue(dead_letter_queue_name(QUEUE), passive=True)
        return dead.declaration_result.message_count or 0

    async def every_message_parked_or_dropped() -> bool:
        return await depth() + (await dropped(stack) - before) == sent

    try:
        await wait_until(every_message_parked_or_dropped, timeout=10.0)
        # Each reply follows its park, so the twelve parks came one after another; a quorum queue
        # applies the bound once it is over it, so it may hold one message more, never two.
        assert TINY <= await depth() <= TINY + 1, f"{await depth()} messages in a dead-letter queue bounded at {TINY}"
        await asyncio.sleep(1.0)  # a park retried instead of dropped would show as a redelivery by now
        commands = await channel.declare_queue(QUEUE, passive=True)
        assert commands.declaration_result.message_count == 0, "a message whose park was refused went back on the queue"
        assert await every_message_parked_or_dropped()
    finally:
        await channel.close()
    reply = await broker.command("get-post", {"post_id": str(uuid4())})
    assert reply is not None and reply["error"]["status"] == 404, reply
