"""How a service binds its handlers to the declared commands and events.

    HANDLERS = {"delete-post": delete_post, "get-post": get_post, ...}        # in its handlers module
    Wiring(commands=bind_commands(NAME, HANDLERS), events=bind_events(NAME, EVENT_HANDLERS), ...)

Everything but the handler comes from the declaration (shared/commands.py, shared/events.py): the
payload model, the policy, whether the command replays or is a public read, the events it may
emit. A service whose handlers do not cover exactly its declared commands and events does not
start, and `check_routes` refuses a route whose policy is not a `Policy`: a command cannot be
served unguarded, or served by the wrong service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.authorization import Policy
from shared.commands import COMMANDS, audit_command_name, commands_of
from shared.declarations import Command, Payload
from shared.events import EVENTS, events_heard_by

#: `async def handler(cmd, caller, conn) -> result`; the result must be JSON-serialisable.
CommandHandler = Callable[[Any, Any, Any], Awaitable[Any]]
#: `async def handler(event, conn) -> None`.
EventHandler = Callable[[Any, Any], Awaitable[None]]


class UndeclaredPolicyError(RuntimeError):
    """A command was routed without an authorization policy."""


class WiringError(RuntimeError):
    """A service's handlers do not match what is declared for it."""


@dataclass(frozen=True, slots=True)
class CommandRoute:
    """A declared command with the handler that executes it."""

    declaration: Command
    handler: CommandHandler

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def policy(self) -> Policy:
        return self.declaration.policy

    @property
    def payload(self) -> type[Payload]:
        return self.declaration.payload

    @property
    def replays(self) -> bool:
        return self.declaration.replays

    @property
    def reads_only(self) -> bool:
        """A public read: the handler runs outside a transaction, on a connection that cannot write."""
        return self.declaration.public_read

    @property
    def emits(self) -> tuple[str, ...]:
        return self.declaration.emits

    @property
    def runs_alone(self) -> bool:
        """Never in a group-commit batch: its handler waits on slow work besides the database."""
        return self.declaration.runs_alone


@dataclass(frozen=True, slots=True)
class EventRoute:
    routing_key: str
    handler: EventHandler
    model: type[BaseModel]


def route(name: str, handler: CommandHandler) -> CommandRoute:
    """The route of the declared command `name`."""
    if name not in COMMANDS:
        raise WiringError(f"{name!r} is not a declared command: declare it in shared/commands.py first")
    return CommandRoute(COMMANDS[name], handler)


def _check_cover(service: str, what: str, bound: Iterable[str], declared: Iterable[str]) -> None:
    bound, declared = set(bound), set(declared)
    if bound != declared:
        problems = []
        if declared - bound:
            problems.append(f"no handler for {sorted(declared - bound)}")
        if bound - declared:
            problems.append(f"handlers for {sorted(bound - declared)}, which are not declared for it")
        raise WiringError(f"{service}_service {what}: {'; '.join(problems)}")


def bind_commands(service: str, handlers: Mapping[str, CommandHandler]) -> list[CommandRoute]:
    """The routes of every command declared for `service`; its audit trail is bound by the runner."""
    declared = [c.name for c in commands_of(service) if c.name != audit_command_name(service)]
    _check_cover(service, "commands", handlers, declared)
    return [route(name, handlers[name]) for name in declared]


def bind_events(service: str, handlers: Mapping[str, EventHandler]) -> list[EventRoute]:
    """The routes of every event `service` is declared to hear."""
    declared = events_heard_by(service)
    _check_cover(service, "events", handlers, declared)
    return [EventRoute(key, handlers[key], EVENTS[key].model) for key in declared]


def check_routes(routes: Iterable[CommandRoute]) -> dict[str, CommandRoute]:
    """Index routes by name, refusing duplicates and any route without a real policy."""
    table: dict[str, CommandRoute] = {}
    for each in routes:
        if not isinstance(each.policy, Policy):
            raise UndeclaredPolicyError(f"command {each.name!r} has no authorization policy")
        if each.name in table:
            raise ValueError(f"command {each.name!r} is registered twice")
        table[each.name] = each
    return table
