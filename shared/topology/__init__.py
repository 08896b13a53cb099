"""The broker topology, defined once: the exchanges, each service's queues and every binding.

    python -m shared.topology declare            as an admin (AMQP_URL): create all of it; idempotent
    python -m shared.topology definitions FILE   rewrite FILE's exchanges, queues and bindings from it

A process applies it in one of two modes (`BROKER_TOPOLOGY`):

- `declare` (development, the test suite): it declares the exchanges, its own queues and their
  bindings, so its broker user needs configure, and read on `commands` to bind;
- `verify` (production): the topology already exists (`declare` above, or the definitions file at
  broker boot) and the process only passive-declares the exchanges and its own queues, which needs
  no permission. Its user then has no configure, so it cannot delete a shared exchange, and no read
  on `commands`, so it cannot bind its queue to another service's commands and read their tokens.

`ROUTES` is derived from the declarations (shared/commands.py, shared/events.py). A service
refuses to start when its wiring handles other commands or events than `ROUTES` sends it
(`check_wiring`), and a test holds deploy/rabbitmq/definitions.json to `as_definitions`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from shared.broker import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_LENGTH,
    DEAD_LETTER_OVERFLOW,
    DELIVERY_LIMIT,
    EVENTS_EXCHANGE,
    GATEWAY_DEAD_LETTER_EXCHANGE,
    GATEWAY_EVENTS,
    LIVE_QUEUE_PREFIX,
    command_queue_name,
    dead_letter_queue_name,
    event_queue_name,
)
from shared.commands import commands_of
from shared.declarations import GATEWAY, SERVICE_NAMES, SERVICES
from shared.events import events_heard_by, events_published_by, public_events
from shared.settings import BrokerTopology

EXCHANGES = {
    COMMANDS_EXCHANGE: aio_pika.ExchangeType.DIRECT,
    EVENTS_EXCHANGE: aio_pika.ExchangeType.TOPIC,
    DEAD_LETTER_EXCHANGE: aio_pika.ExchangeType.DIRECT,
    GATEWAY_DEAD_LETTER_EXCHANGE: aio_pika.ExchangeType.DIRECT,
}


@dataclass(frozen=True, slots=True)
class Routes:
    """The commands a service's command queue takes (its `list-audit.<service>` among them) and the events it hears."""

    commands: tuple[str, ...]
    events: tuple[str, ...]


#: By service name, the prefix of its queues; derived from the declarations.
ROUTES = {service: Routes(tuple(c.name for c in commands_of(service)), events_heard_by(service)) for service in SERVICE_NAMES}


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


class TopologyError(RuntimeError):
    """The broker lacks part of the topology, or a service's wiring disagrees with `ROUTES`."""


def command_keys(service: str) -> tuple[str, ...]:
    return ROUTES[service].commands


#: Every `<queue>.dead` is bounded (see shared/broker.py for why it rejects rather than drops).
#: Changing these on a broker that has the queues makes redeclaring them fail with
#: PRECONDITION_FAILED: OPERATIONS.md says how to migrate.
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-max-length": DEAD_LETTER_MAX_LENGTH,
    "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
    "x-overflow": DEAD_LETTER_OVERFLOW,
}


def queues(service: str) -> list[Queue]:
    """The service's quorum queues, each dead-letter queue before the queue that dead-letters into it."""
    found = []
    for name in (command_queue_name(service), event_queue_name(service)):
        found.append(Queue(dead_letter_queue_name(name), DEAD_LETTER_QUEUE_ARGUMENTS))
        found.append(
            Queue(
                name,
                {
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                    "x-dead-letter-routing-key": name,
                    "x-delivery-limit": DELIVERY_LIMIT,
                },
            )
        )
    return found


#: Where the gateways park the events they refuse (a publisher that does not own the key, a
#: malformed body): their own queues are exclusive and come and go, this one stays.
GATEWAY_DEAD_LETTERS = Queue(dead_letter_queue_name(GATEWAY_EVENTS), DEAD_LETTER_QUEUE_ARGUMENTS)
GATEWAY_DEAD_LETTER_BINDING = Binding(GATEWAY_DEAD_LETTER_EXCHANGE, GATEWAY_DEAD_LETTERS.name, GATEWAY_EVENTS)

#: The arguments of a gateway's exclusive event queue: refused events go to `gateway.events.dead`.
LIVE_QUEUE_ARGUMENTS: dict[str, Any] = {"x-dead-letter-exchange": GATEWAY_DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": GATEWAY_EVENTS}


def bindings(service: str) -> list[Binding]:
    commands, events = command_queue_name(service), event_queue_name(service)
    return [
        *(Binding(DEAD_LETTER_EXCHANGE, dead_letter_queue_name(queue), queue) for queue in (commands, events)),
        *(Binding(COMMANDS_EXCHANGE, commands, key) for key in command_keys(service)),
        *(Binding(EVENTS_EXCHANGE, events, key) for key in ROUTES[service].events),
    ]


def check_wiring(service: str, commands: Iterable[str], events: Iterable[str]) -> None:
    """Refuse a service whose wiring handles other commands or events than its queues are bound to."""
    wired = (sorted(commands), sorted(events))
    routed = (sorted(command_keys(service)), sorted(ROUTES[service].events)) if service in ROUTES else None
    if wired != routed:
        raise TopologyError(
            f"{service}'s wiring handles (commands, events) {wired}, but the declarations route it {routed}: "
            "declare them in shared/commands.py or shared/events.py, then run `python -m shared.generate`"
        )


async def declare(channel: AbstractChannel, services: Iterable[str]) -> dict[str, AbstractQueue]:
    """Declare the exchanges, the services' queues and their bindings (needs configure: an admin or a developer)."""
    for name, kind in EXCHANGES.items():
        await channel.declare_exchange(name, kind, durable=True)
    declared: dict[str, AbstractQueue] = {}
    dead = await channel.declare_queue(GATEWAY_DEAD_LETTERS.name, durable=True, arguments=GATEWAY_DEAD_LETTERS.arguments)
    await dead.bind(GATEWAY_DEAD_LETTER_BINDING.exchange, routing_key=GATEWAY_DEAD_LETTER_BINDING.routing_key)
    for service in services:
        for queue in queues(service):
            declared[queue.name] = await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
        for binding in bindings(service):
            await declared[binding.queue].bind(binding.exchange, routing_key=binding.routing_key)
    return declared


async def verify(channel: AbstractChannel, service: str) -> dict[str, AbstractQueue]:
    """Passive declares of the exchanges and the service's queues: they need no permission and create nothing."""
    try:
        for name in EXCHANGES:
            await channel.declare_exchange(name, passive=True)
        return {queue.name: await channel.declare_queue(queue.name, passive=True) for queue in queues(service)}
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise _missing(exc) from None


async def open_service_queues(channel: AbstractChannel, service: str, mode: BrokerTopology) -> tuple[AbstractQueue, AbstractQueue]:
    """The service's command and event queues, declared or verified according to `mode`."""
    found = await (declare(channel, [service]) if mode == "declare" else verify(channel, service))
    return found[command_queue_name(service)], found[event_queue_name(service)]


async def open_exchange(channel: AbstractChannel, name: str, mode: BrokerTopology) -> AbstractExchange:
    try:
        return await channel.declare_exchange(name, EXCHANGES[name], durable=True, passive=mode == "verify")
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise _missing(exc) from None


def _missing(exc: Exception) -> TopologyError:
    reason = exc.args[-1] if exc.args else exc
    return TopologyError(f"the broker topology is incomplete ({reason}): an admin creates it with `python -m shared.topology declare`")


def as_definitions(vhost: str) -> dict[str, list[dict[str, Any]]]:
    """The exchanges, queues and bindings in RabbitMQ's definitions format."""
    return {
        "exchanges": [
            {"name": name, "vhost": vhost, "type": kind.value, "durable": True, "auto_delete": False, "internal": False, "arguments": {}}
            for name, kind in EXCHANGES.items()
        ],
        "queues": [
            {"name": queue.name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": queue.arguments}
            for queue in (GATEWAY_DEAD_LETTERS, *(q for service in ROUTES for q in queues(service)))
        ],
        "bindings": [
            {
                "source": binding.exchange,
                "vhost": vhost,
                "destination": binding.queue,
                "destination_type": "queue",
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for binding in (GATEWAY_DEAD_LETTER_BINDING, *(b for service in ROUTES for b in bindings(service)))
        ],
    }


#: The gateway's RabbitMQ user (BROKER_USER_GATEWAY's default); each service's is its package name.
GATEWAY_USER = GATEWAY.default_broker_user


@dataclass(frozen=True, slots=True)
class Grant:
    """What one process's RabbitMQ user may do on the vhost, as RabbitMQ's unanchored regexes.

    The topology already exists, so no process declares, binds or deletes anything (configure
    `^$`, no read on an exchange): a process cannot bind its queue to another service's commands,
    nor delete a shared exchange. Publishing needs write on the exchange (the default exchange, for
    replies, is `amq.default`) and consuming needs read on the queue; passive declares and direct
    reply-to need no permission. On `events`, a service may publish only the events it owns.
    """

    user: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def _literal(name: str) -> str:
    """A name as a regex matching only itself (`-` needs no escape, and reads better without)."""
    return re.escape(name).replace("\\-", "-")


def grants() -> list[Grant]:
    """Every process's grant, derived from the declarations: the gateway's, then each service's."""
    # The gateway publishes commands, and keeps one exclusive queue of the public events per
    # replica: it declares it (configure), binds it to `events` (write on the queue, read on the
    # exchange, topic read on each public key) and parks what it refuses through its own dead-letter exchange.
    live = f"^{re.escape(LIVE_QUEUE_PREFIX)}"
    public = "|".join(_literal(key) for key in public_events())
    found = [
        Grant(
            GATEWAY_USER,
            live,
            f"^({COMMANDS_EXCHANGE}|{_literal(GATEWAY_DEAD_LETTER_EXCHANGE)})$|{live}",
            f"^{_literal(EVENTS_EXCHANGE)}$|{live}",
            "^$",
            f"^({public})$",
        )
    ]
    for service in SERVICES:
        published = "|".join(_literal(key) for key in events_published_by(service.name))
        found.append(
            Grant(
                service.process.default_broker_user,
                "^$",
                f"^(amq\\.default|{_literal(EVENTS_EXCHANGE)}|{_literal(DEAD_LETTER_EXCHANGE)})$",
                f"^{_literal(service.name)}\\.(commands|events)$",
                f"^({published})$" if published else "^$",
                ".*",
            )
        )
    return found


def permission_definitions(vhost: str) -> dict[str, list[dict[str, Any]]]:
    """The grants in RabbitMQ's definitions format."""
    return {
        "permissions": [{"user": g.user, "vhost": vhost, "configure": g.configure, "write": g.write, "read": g.read} for g in grants()],
        "topic_permissions": [
            {"user": g.user, "vhost": vhost, "exchange": EVENTS_EXCHANGE, "write": g.topic_write, "read": g.topic_read} for g in grants()
        ],
    }
