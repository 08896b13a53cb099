"""`python -m shared.topology`: an admin creates the broker topology, or writes it into a definitions file.

    python -m shared.topology declare                                        (uses AMQP_URL)
    python -m shared.topology definitions deploy/rabbitmq/definitions.json

`declare` needs a user with configure, write and read on AMQP_URL's vhost: with `BROKER_TOPOLOGY=verify`
the services' own users have none of that. `definitions` keeps the file's vhost, users and
permissions and replaces its exchanges, queues and bindings, so the file cannot drift from the code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika

from shared.settings import ConfigurationError, Settings
from shared.topology import EXCHANGES, ROUTES, as_definitions, declare

EXAMPLES = """examples:
  AMQP_URL=amqp://admin:secret@rabbitmq.internal:5672/posts python -m shared.topology declare
  python -m shared.topology definitions deploy/rabbitmq/definitions.json
"""


async def declare_all(amqp_url: str) -> str:
    connection = await aio_pika.connect(amqp_url)
    try:
        declared = await declare(await connection.channel(), ROUTES)
    finally:
        await connection.close()
    vhost = unquote(urlsplit(amqp_url).path.removeprefix("/")) or "/"
    return f"declared {len(EXCHANGES)} exchanges and {len(declared)} queues with their bindings on vhost {vhost!r}"


def write_definitions(path: Path) -> str:
    document = json.loads(path.read_text(encoding="utf-8"))
    vhosts = [vhost["name"] for vhost in document.get("vhosts", [])]
    if len(vhosts) != 1:
        raise ValueError(f"{path} should define exactly one vhost, defines {vhosts}")
    document.update(as_definitions(vhosts[0]))
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return f"wrote the exchanges, queues and bindings of vhost {vhosts[0]!r} into {path}"


def build_parser() -> argparse.ArgumentParser:
    shown = {"epilog": EXAMPLES, "formatter_class": argparse.RawDescriptionHelpFormatter}
    parser = argparse.ArgumentParser(
        prog="python -m shared.topology", description="Create the broker topology, or write it into a definitions file.", **shown
    )
    actions = parser.add_subparsers(dest="action", required=True)
    declare_help = "as AMQP_URL's user (an admin of its vhost), create the exchanges, every service's queues and their bindings; safe to run again"
    actions.add_parser("declare", help=declare_help, description=declare_help, **shown)
    definitions_help = "replace a RabbitMQ definitions file's exchanges, queues and bindings, keeping its vhost, users and permissions"
    definitions = actions.add_parser("definitions", help=definitions_help, description=definitions_help, **shown)
    definitions.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
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
