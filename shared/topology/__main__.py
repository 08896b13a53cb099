"""`python -m shared.topology`: an admin creates the broker topology, or writes it into a definitions file.

    python -m shared.topology declare                                        (uses AMQP_URL)
    python -m shared.topology definitions deploy/rabbitmq/definitions.json
    python -m shared.topology grants                                         (what scripts/broker-permissions applies)

`declare` needs a user with configure, write and read on AMQP_URL's vhost: with `BROKER_TOPOLOGY=verify`
the services' own users have none of that. `definitions` keeps the file's vhost and users and
replaces its exchanges, queues, bindings, permissions and topic permissions, so the file cannot
drift from the code. `grants` prints each process's user and permissions, one line each, tab
separated: user, configure, write, read, topic write and topic read on `events`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika

from shared.broker import broker_urls
from shared.broker_failover import connect_first
from shared.generate import definitions
from shared.settings import ConfigurationError, Settings
from shared.topology import EXCHANGES, ROUTES, declare, grants

EXAMPLES = """examples:
  AMQP_URL=amqp://admin:secret@rabbitmq.internal:5672/posts python -m shared.topology declare
  python -m shared.topology definitions deploy/rabbitmq/definitions.json
"""


async def declare_all(amqp_url: str) -> str:
    connection, _ = await connect_first(amqp_url)
    try:
        declared = await declare(await connection.channel(), ROUTES)
    finally:
        await connection.close()
    vhost = unquote(urlsplit(broker_urls(amqp_url)[0]).path.removeprefix("/")) or "/"
    return f"declared {len(EXCHANGES)} exchanges and {len(declared)} queues with their bindings on vhost {vhost!r}"


def write_definitions(path: Path) -> str:
    path.write_text(definitions(path.read_text(encoding="utf-8")), encoding="utf-8")
    return f"wrote the exchanges, queues, bindings and permissions into {path}"


def render_grants() -> str:
    return "".join("\t".join((g.user, g.configure, g.write, g.read, g.topic_write, g.topic_read)) + "\n" for g in grants())


def build_parser() -> argparse.ArgumentParser:
    shown: dict[str, Any] = {"epilog": EXAMPLES, "formatter_class": argparse.RawDescriptionHelpFormatter}
    parser = argparse.ArgumentParser(
        prog="python -m shared.topology", description="Create the broker topology, or write it into a definitions file.", **shown
    )
    actions = parser.add_subparsers(dest="action", required=True)
    declare_help = (
        "as AMQP_URL's user (an admin of its vhost), create the exchanges, every service's queues and their bindings; safe to run again"
    )
    actions.add_parser("declare", help=declare_help, description=declare_help, **shown)
    definitions_help = "replace a RabbitMQ definitions file's exchanges, queues, bindings and permissions, keeping its vhost and users"
    definitions = actions.add_parser("definitions", help=definitions_help, description=definitions_help, **shown)
    definitions.add_argument("file", type=Path)
    grants_help = "print each process's broker user and permissions, tab separated (scripts/broker-permissions reads them)"
    actions.add_parser("grants", help=grants_help, description=grants_help, **shown)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "grants":
        print(render_grants(), end="")
        return 0
    if args.action == "definitions":
        try:
            print(write_definitions(args.file))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        print(asyncio.run(declare_all(Settings.from_env().amqp_url)))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (aio_pika.exceptions.AMQPError, OSError) as exc:
        print(f"error: the broker in AMQP_URL refused or could not be reached: {exc!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
