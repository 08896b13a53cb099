"""Operator commands for dead-lettered messages: list them, replay them, drop them.

    python -m shared.dead_letters list   posts.commands
    python -m shared.dead_letters replay posts.commands --id 6f1c…   (or --all)
    python -m shared.dead_letters drop   posts.events --all

QUEUE is the queue the messages died in (`<service>.commands` or `<service>.events`); they wait in
`QUEUE.dead` with the reason in `x-dead-letter-reason`. Replay publishes a message back to the
exchange and routing key it was first sent to. A parked command's token was redacted, so replaying
an authenticated command gets a 401 unless the sender publishes it again with a fresh token: replay
is for messages that failed for a reason since fixed (a bug, a missing service), not a way around
authorization. Uses AMQP_URL.

Services accept an event only from its owning service's broker user (its AMQP `user_id`, which
RabbitMQ lets nobody claim but that user), so a parked event is replayed through its owner: it goes
back into the owning service's outbox (DATABASE_URL) with its event_id, and the owner's relay
publishes it as the owner. Only an event the owner itself published is replayed; one somebody else
published (parked as not its owner's) stays parked, so replay never turns a forged event into a
real one. A command is published again as AMQP_URL's user, and keeps `x-client-address` and `x-client-user-agent` only when
that user is the gateway's (BROKER_USER_GATEWAY): from anyone else it would be parked again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from shared.broker import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, dead_letter_queue_name, login_user
from shared.broker_failover import connect_first
from shared.declarations import GATEWAY
from shared.envelope import GATEWAY_ONLY_HEADERS
from shared.events import EVENTS, Event
from shared.outbox import notify_channel
from shared.settings import ConfigurationError, Settings

EXAMPLES = """examples:
  python -m shared.dead_letters list posts.commands
  python -m shared.dead_letters replay posts.commands --id 6f1c2a9e-8c6b-4a63-9d2e-3f0e7b1a5c42
  python -m shared.dead_letters drop posts.events --all
"""
PAST = {"replay": "replayed", "drop": "dropped"}
_BOOKKEEPING = (
    "x-dead-letter-reason",
    "x-original-exchange",
    "x-original-routing-key",
    "x-original-user-id",
    "x-death",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def describe(message: AbstractIncomingMessage) -> str:
    headers = message.headers or {}
    reason = headers.get("x-dead-letter-reason") or headers.get("x-first-death-reason") or "unknown"
    key = headers.get("x-original-routing-key") or message.routing_key
    return (
        f"{message.message_id or '-'}\ttype={message.type or '-'}\trouting_key={_text(key)}"
        f"\tbytes={len(message.body)}\treason={_text(reason)}"
    )


def origin(message: AbstractIncomingMessage) -> tuple[str, str]:
    """Where the message was first published: from our own headers, or RabbitMQ's x-death."""
    headers = message.headers or {}
    if "x-original-exchange" in headers:
        return _text(headers["x-original-exchange"]), _text(headers["x-original-routing-key"])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys")
        return _text(death.get("exchange", "")), _text(keys[0] if isinstance(keys, list) and keys else message.routing_key)
    raise ValueError("the message does not say where it came from")


async def _take_all(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.declare_queue(dead_letter_queue_name(queue_name), passive=True)
    taken = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        taken.append(message)
    return taken


def original_publisher(message: AbstractIncomingMessage, parker: str) -> str | None:
    """Who first published a parked message. The runner keeps it in `x-original-user-id` when it
    parks one (republishing it as itself), believed only when `parker`, the broker user of the
    service whose queue it died in, parked it: any service may write to `dead-letters`, and a
    header is what anyone can claim. RabbitMQ's own dead-lettering keeps the original `user_id`."""
    headers = message.headers or {}
    if "x-original-user-id" in headers:
        if message.user_id != parker:
            return None
        return _text(headers["x-original-user-id"]) or None
    return message.user_id


async def _replay_event(
    message: AbstractIncomingMessage, queue_name: str, routing_key: str, database_url: str, broker_users: Mapping[str, str]
) -> None:
    """Hand a parked event back to its owning service: into its outbox, with its event_id, so the
    owner's relay publishes it as the owner (its `user_id`). Only what the owner itself published:
    replay must never lend an owner's name to an event somebody else made up."""
    event = EVENTS[routing_key]
    owner = broker_users[event.owner.name]
    parker = broker_users.get(queue_name.partition(".")[0], "")
    publisher = original_publisher(message, parker)
    if publisher != owner:
        raise ReplayRefused(f"published by {publisher or 'an unnamed user'}, not by its owner {owner}: it stays parked")
    try:
        event.model.model_validate_json(message.body)
        event_id = Event.model_validate_json(message.body).event_id
    except ValidationError:
        raise ReplayRefused(f"not a valid {routing_key} event: it stays parked") from None
    conn = await asyncpg.connect(database_url)
    try:
        schema = event.owner.name
        # The consumers that saw it already ignore it by event_id; the others apply it now.
        await conn.execute(
            f"WITH event AS (INSERT INTO {schema}.outbox (event_id, routing_key, body) VALUES ($1, $2, $3::jsonb)"
            " ON CONFLICT DO NOTHING) SELECT pg_notify($4, '')",
            event_id,
            routing_key,
            message.body.decode(),
            notify_channel(schema),
        )
    finally:
        await conn.close()


class ReplayRefused(Exception):
    """A parked message that replay leaves where it is, and why."""


async def run(
    action: str,
    queue_name: str,
    message_id: str | None,
    every: bool,
    amqp_url: str,
    *,
    database_url: str,
    broker_users: Mapping[str, str],
) -> list[str]:
    lines: list[str] = []
    user = login_user(amqp_url)
    connection, _ = await connect_first(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        messages = await _take_all(channel, queue_name)
        for message in messages:
            chosen = action != "list" and (every or message.message_id == message_id)
            if not chosen:
                await message.nack(requeue=True)
                if action == "list":
                    lines.append(describe(message))
                continue
            if action == "replay":
                exchange_name, routing_key = origin(message)
                try:
                    if exchange_name == EVENTS_EXCHANGE and routing_key in EVENTS:
                        await _replay_event(message, queue_name, routing_key, database_url, broker_users)
                    else:
                        await _republish(channel, message, exchange_name, routing_key, user, broker_users)
                except ReplayRefused as refused:
                    await message.nack(requeue=True)
                    lines.append(f"not replayed ({refused}) {describe(message)}")
                    continue
            await message.ack()
            lines.append(f"{PAST[action]} {describe(message)}")
    finally:
        await connection.close()
    return lines


async def _republish(
    channel: AbstractChannel,
    message: AbstractIncomingMessage,
    exchange_name: str,
    routing_key: str,
    user: str,
    broker_users: Mapping[str, str],
) -> None:
    """Publish a parked message again, as the operator (AMQP_URL's user, its `user_id`)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _BOOKKEEPING}
    if exchange_name == COMMANDS_EXCHANGE and user != broker_users[GATEWAY.name]:
        # Services believe it only from the gateway: from anyone else the command would be parked again.
        for header in GATEWAY_ONLY_HEADERS:
            headers.pop(header, None)
    exchange = channel.default_exchange if exchange_name == "" else await channel.get_exchange(exchange_name, ensure=False)
    await exchange.publish(
        aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=user,
        ),
        routing_key=routing_key,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.dead_letters",
        description="List, replay or drop dead-lettered messages (uses AMQP_URL).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["list", "replay", "drop"])
    parser.add_argument("queue", help="the queue the messages died in, e.g. posts.commands")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--id", dest="message_id", help="only the message with this message_id")
    which.add_argument("--all", action="store_true", help="every message in the dead-letter queue")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action != "list" and not (args.all or args.message_id):
        print("error: say which messages: --id MESSAGE_ID or --all", file=sys.stderr)
        return 1
    try:
        settings = Settings.from_env()
        lines = asyncio.run(
            run(
                args.action,
                args.queue,
                args.message_id,
                args.all,
                settings.amqp_url,
                database_url=settings.database_url,
                broker_users=settings.broker_users,
            )
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except aio_pika.exceptions.ChannelNotFoundEntity:
        print(f"error: there is no dead-letter queue for {args.queue}", file=sys.stderr)
        return 1
    except (aio_pika.exceptions.AMQPError, OSError) as exc:
        print(f"error: cannot reach the broker in AMQP_URL: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines) if lines else "no matching messages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
