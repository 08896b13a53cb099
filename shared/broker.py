"""The broker's names: the contract's exchanges, each service's queues and the dead-letter rules.

    commands      direct, durable   routing key = command name
    events        topic,  durable   routing key = event name (post.created, ...)
    dead-letters  direct, durable   routing key = the queue a message died in

Each service owns two durable quorum queues, `<service>.commands` and `<service>.events`, with a
dead-letter exchange and a delivery limit, so a message that keeps crashing its consumer ends up
in `<queue>.dead` instead of looping forever. What is bound to what, and how it gets onto the
broker, is `shared/topology`.
"""

from __future__ import annotations

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
