"""How a service declares what it handles: commands with their policy, and event subscriptions.

    ROUTES = [
        command("delete-post", delete_post, policy=OwnerOrAdmin(load_post_author, action="delete this post")),
        command("get-post", get_post, policy=PUBLIC, replays=False),
    ]

`policy` has no default: leaving it out is a TypeError, and `check_routes` refuses anything that is
not a `Policy`, so a service with an undeclared command does not start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.authorization import Policy
from shared.commands import COMMAND_PAYLOADS, Payload

#: `async def handler(cmd, caller, conn) -> result`; the result must be JSON-serialisable.
CommandHandler = Callable[[Any, Any, Any], Awaitable[Any]]
#: `async def handler(event, conn) -> None`.
EventHandler = Callable[[Any, Any], Awaitable[None]]


class UndeclaredPolicyError(RuntimeError):
    """A command was registered without an authorization policy."""


@dataclass(frozen=True, slots=True)
class CommandRoute:
    name: str
    handler: CommandHandler
    policy: Policy
    payload: type[Payload]
    #: Whether a repeated message_id gets the stored reply instead of running again.
    replays: bool
    #: A public read: the handler runs outside a transaction, on a connection that cannot write.
    reads_only: bool = False


@dataclass(frozen=True, slots=True)
class EventRoute:
    routing_key: str
    handler: EventHandler
    model: type[BaseModel]


def command(
    name: str,
    handler: CommandHandler,
    *,
    policy: Policy,
    replays: bool = True,
    reads_only: bool = False,
    payload: type[Payload] | None = None,
) -> CommandRoute:
    """A command route. Contract commands take their payload model from `COMMAND_PAYLOADS`;
    platform commands (the audit trail) name theirs.

    `reads_only` is for public reads of one statement (get-post): with no session to check, no
    message id to claim and no decision to audit, such a command needs no transaction, and
    skipping BEGIN and COMMIT saves two of its three round trips. Its connection comes from a
    read-only pool, so a handler that tried to write would fail rather than write unguarded."""
    if payload is None:
        if name not in COMMAND_PAYLOADS:
            raise ValueError(f"{name!r} is not a command of the contract")
        payload = COMMAND_PAYLOADS[name]
    return CommandRoute(name, handler, policy, payload, replays, reads_only)


def event(routing_key: str, handler: EventHandler, *, model: type[BaseModel]) -> EventRoute:
    return EventRoute(routing_key, handler, model)


def check_routes(routes: Iterable[CommandRoute]) -> dict[str, CommandRoute]:
    """Index routes by name, refusing duplicates and any route without a real policy."""
    table: dict[str, CommandRoute] = {}
    for route in routes:
        if not isinstance(route.policy, Policy):
            raise UndeclaredPolicyError(f"command {route.name!r} has no authorization policy")
        if route.reads_only and (route.policy.needs_token or route.replays):
            raise ValueError(f"command {route.name!r}: only a public command that does not replay can skip its transaction")
        if route.name in table:
            raise ValueError(f"command {route.name!r} is registered twice")
        table[route.name] = route
    return table
