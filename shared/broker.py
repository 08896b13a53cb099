"""The broker topology of the contract, declared in one place.

    commands      direct, durable   routing key = command name
    events        topic,  durable   routing key = event name (post.created, ...)
    dead-letters  direct, durable   routing key = the queue a message died in

Each service owns two durable quorum queues, `<service>.commands` and `<service>.events`, with a
dead-letter exchange and a delivery limit, so a message that keeps crashing its consumer ends up
in `<queue>.dead` instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Iterable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

COMMANDS_EXCHANGE = "commands"
EVENTS_EXCHANGE = "events"
DEAD_LETTER_EXCHANGE = "dead-letters"
#: How many times a message may be delivered before RabbitMQ dead-letters it.
DELIVERY_LIMIT = 5
#: How soon a robust connection tries again after losing the broker.
RECONNECT_SECONDS = 1.0


def command_queue_name(service: str) -> str:
    return f"{service}.commands"


def event_queue_name(service: str) -> str:
    return f"{service}.events"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    durable = {"durable": True}
    return {
        COMMANDS_EXCHANGE: await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.DIRECT, **durable),
        EVENTS_EXCHANGE: await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, **durable),
        DEAD_LETTER_EXCHANGE: await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, **durable
        ),
    }


async def declare_service_queue(
    channel: AbstractChannel, name: str, exchange: str, routing_keys: Iterable[str]
) -> AbstractQueue:
    """A quorum queue bound to `routing_keys` on `exchange`, with its dead-letter queue."""
    dead = await channel.declare_queue(
        dead_letter_queue_name(name), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(DEAD_LETTER_EXCHANGE, routing_key=name)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
            "x-delivery-limit": DELIVERY_LIMIT,
        },
    )
    for key in routing_keys:
        await queue.bind(exchange, routing_key=key)
    return queue
