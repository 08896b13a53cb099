"""The broker's names: the contract's exchanges, each service's queues and the dead-letter rules.

    commands      direct, durable   routing key = command name
    events        topic,  durable   routing key = event name (post.created, ...)
    dead-letters  direct, durable   routing key = the queue a message died in

Each service owns two durable quorum queues, `<service>.commands` and `<service>.events`, with a
dead-letter exchange and a delivery limit, so a message that keeps crashing its consumer ends up
in `<queue>.dead` instead of looping forever. What is bound to what, and how it gets onto the
broker, is `shared/topology`.

AMQP_URL names one broker or the nodes of a cluster, comma-separated (`broker_urls`); how a
process connects to them and fails over is `shared/broker_failover`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

COMMANDS_EXCHANGE = "commands"
EVENTS_EXCHANGE = "events"
DEAD_LETTER_EXCHANGE = "dead-letters"
#: How many times a message may be delivered before RabbitMQ dead-letters it.
DELIVERY_LIMIT = 5
#: The bounds of every `<queue>.dead`: whichever is reached first. Anyone who can publish can make
#: messages that get parked, so without a bound they could fill the broker's disk.
DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
#: What a full dead-letter queue does with one more message. `reject-publish` rather than
#: `drop-head`: a flood of junk must not push out what was parked first (often the one message
#: that shows a real bug), and a refused park is seen (the runner's confirm gets a nack, which it
#: logs and counts in `dead_letters_dropped_total{queue}`), where `drop-head` drops silently.
DEAD_LETTER_OVERFLOW = "reject-publish"
#: How soon a robust connection tries again after losing the broker.
RECONNECT_SECONDS = 1.0


def broker_urls(amqp_url: str) -> list[str]:
    """The brokers an AMQP_URL names: one URL, or several separated by commas (the nodes of one
    cluster, tried in that order). ValueError unless every one is an amqp or amqps URL with a host,
    and all log in as the same user to the same vhost: a process is one broker user on one vhost
    whichever node it reaches (its `user_id`, its permissions, its queues)."""
    urls = [part.strip() for part in amqp_url.split(",")]
    if not all(urls):
        raise ValueError(f"an empty broker URL in {amqp_url!r}")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError(f"{_without_password(url)!r} is not an amqp or amqps URL")
    first = urlsplit(urls[0])
    for url in urls[1:]:
        parts = urlsplit(url)
        if _vhost(parts.path) != _vhost(first.path):
            raise ValueError(f"every broker must be the same vhost: {_vhost(first.path)!r} and {_vhost(parts.path)!r}")
        if unquote(parts.username or "guest") != unquote(first.username or "guest"):
            raise ValueError(f"every broker must log in as the same user: {first.username!r} and {parts.username!r}")
    return urls


def broker_address(amqp_url: str) -> str:
    """host:port of one broker URL, without its credentials (what logs and errors name)."""
    parts = urlsplit(amqp_url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _vhost(path: str) -> str:
    return unquote(path.removeprefix("/")) or "/"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":******@", 1)


def login_user(amqp_url: str) -> str:
    """The user an AMQP URL logs in as (aio-pika's default, guest, when it names none); with
    several brokers, the first's (`broker_urls` makes them all the same). Every message a process
    publishes carries it as `user_id`: RabbitMQ refuses any other, so a consumer can trust it to
    say who published (SECURITY.md, "Who published it")."""
    return unquote(urlsplit(amqp_url.split(",", 1)[0].strip()).username or "guest")


def command_queue_name(service: str) -> str:
    return f"{service}.commands"


def event_queue_name(service: str) -> str:
    return f"{service}.events"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


#: Each gateway replica's own queue of public events is `gateway.live.<instance>`: exclusive, so
#: it goes with the replica's connection and replicas come and go without leaving queues behind.
LIVE_QUEUE_PREFIX = "gateway.live."
#: The routing key of an event a gateway refused, parked in `gateway.events.dead`.
GATEWAY_EVENTS = "gateway.events"
#: The gateways' own dead-letter exchange, bound to `gateway.events.dead` alone. Declaring a queue
#: that dead-letters needs write on the exchange it names: on `dead-letters` that would let the
#: gateway put messages into every service's dead-letter queue, which operators read and replay.
GATEWAY_DEAD_LETTER_EXCHANGE = "gateway.dead-letters"
