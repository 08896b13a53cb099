"""The shapes of a declaration: a service, a command (with its HTTP binding) and an event.

The declarations themselves are tables: `shared.commands.COMMANDS` and `shared.events.EVENTS`.
Everything else is derived from them: the runner's routing and the queue bindings
(shared/topology), the broker users' permissions (deploy/rabbitmq/definitions.json,
scripts/broker-permissions), AsyncAPI (shared/asyncapi.py), the gateway's routes and OpenAPI
(gateway/routes.py, gateway/openapi.py), the README's tables and the injection matrix
(tests/test_every_command_is_guarded.py). `python -m shared.generate` rewrites the generated files,
and tests/test_generated.py fails when one is stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from shared.authorization import PUBLIC, Policy


class Payload(BaseModel):
    """Base for command payloads: closed, strict and immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True, slots=True)
class Secret:
    """Marks a payload field whose value is a secret (a password, a refresh token):
    `Annotated[str, SECRET, ...]`.

    The mark is the one statement of it: the JSON schemas (OpenAPI, AsyncAPI) show the field
    `writeOnly`, and `secret_fields` tells the runner what to redact from anything it parks.
    """

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(core_schema), "writeOnly": True}


SECRET = Secret()


@cache
def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` marked `SECRET` (payloads are flat: top-level fields only)."""
    return frozenset(name for name, field in model.model_fields.items() if any(isinstance(m, Secret) for m in field.metadata))


HttpMethod = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]


@dataclass(frozen=True, slots=True)
class Process:
    """A process of the platform, `python -m <package>`, connected to RabbitMQ as a user of its own.

    `BROKER_USER_<NAME>` names that user (default: the package name); every message the process
    publishes carries it as the AMQP `user_id`, which RabbitMQ checks, so a consumer knows who
    published what (an event from its owner, a client address from the gateway).
    """

    name: str
    package: str

    @property
    def broker_user_variable(self) -> str:
        return f"BROKER_USER_{self.name.upper()}"

    @property
    def default_broker_user(self) -> str:
        return self.package


@dataclass(frozen=True, slots=True)
class Service:
    """A service process: `python -m <package>`, queues `<name>.*`, schema `<name>`."""

    name: str

    @property
    def package(self) -> str:
        return f"{self.name}_service"

    @property
    def process(self) -> Process:
        return Process(self.name, self.package)


AUTH = Service("auth")
USERS = Service("users")
POSTS = Service("posts")
#: Every service, in the order a stack starts them (auth first: the others read its keys).
SERVICES: tuple[Service, ...] = (AUTH, USERS, POSTS)
SERVICE_NAMES: tuple[str, ...] = tuple(service.name for service in SERVICES)
#: The gateway: a process that publishes commands and owns no queue.
GATEWAY = Process("gateway", "gateway")
#: Every process, each with its own broker user: the gateway, then the services.
PROCESSES: tuple[Process, ...] = (GATEWAY, *(service.process for service in SERVICES))

_PATH_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Http:
    """How the gateway serves a command.

    Each `{field}` of `path` is a payload field; the other fields come from the query string for
    GET and from the JSON body otherwise (a body whose fields are all optional may be empty; a
    payload with no fields besides the path reads no body). A bearer token is required when the
    command's policy needs one; see `Command.takes_idempotency_key` for the `Idempotency-Key`.
    """

    method: HttpMethod
    path: str
    status: int = 200
    #: A `Location` header for the answer, filled from the result (`/posts/{id}`).
    location: str | None = None
    #: The answer carries a token or an account: `Cache-Control: no-store`, so no browser or
    #: proxy keeps a copy (RFC 9111 §5.2.2.5; RFC 6749 §5.1 asks it of token answers).
    no_store: bool = False
    #: The web UI's refresh-token cookie (gateway/refresh_cookie.py): `issue` moves the refresh
    #: token of the answer into it when the request asks (and, for `refresh`, reads it back);
    #: `clear` deletes it (logout).
    refresh_cookie: Literal["issue", "clear"] | None = None

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(_PATH_FIELD.findall(self.path))

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


@dataclass(frozen=True, slots=True)
class Command:
    """One command: everything the platform needs to route, guard, document and test it."""

    name: str
    service: Service
    payload: type[Payload]
    #: The `result` of a successful reply; None answers `null` (HTTP 204 where bound).
    result: type[BaseModel] | None
    policy: Policy
    summary: str
    #: The events its handler may add; adding any other is an error inside the transaction.
    emits: tuple[str, ...] = ()
    #: A public read of one statement: run outside a transaction on a read-only connection.
    public_read: bool = False
    #: Whether a repeated message_id gets the stored reply instead of running again.
    replays: bool = True
    http: Http | None = None
    #: Statuses the handler itself may answer, beyond those the policy, payload and binding imply
    #: (register's 409 for a taken email, login's 429).
    errors: tuple[int, ...] = ()
    #: Its handler waits on slow work besides the database (a password hash): it always runs in a
    #: transaction of its own, never in a group-commit batch, whose commands run one after another
    #: (shared/group_commit.py); alone, such commands wait on their work side by side.
    runs_alone: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise TypeError(f"command {self.name!r} has no authorization policy")
        if self.public_read and (self.policy is not PUBLIC or self.replays):
            raise ValueError(f"command {self.name!r}: only a public command that does not replay can skip its transaction")
        if self.http is not None:
            unknown = set(self.http.path_fields) - set(self.payload.model_fields)
            if unknown:
                raise ValueError(f"command {self.name!r}: path fields {sorted(unknown)} are not payload fields")

    def accepts_empty_body(self) -> bool:
        """Whether the payload is valid with its path fields alone, so an HTTP body may be left
        out (ban-user's `reason`), or not (edit-post needs a title or a body)."""
        ids = {name: str(uuid4()) for name in (self.http.path_fields if self.http else ())}
        try:
            self.payload.model_validate(ids, strict=False)
        except ValidationError:
            return False
        return True

    @property
    def takes_idempotency_key(self) -> bool:
        """Whether its HTTP route forwards an `Idempotency-Key` as the message_id: a mutating
        route of a command that replays (login never does, so it takes no key)."""
        return self.http is not None and self.http.mutating and self.replays

    @property
    def secret_fields(self) -> frozenset[str]:
        """Payload fields that must never rest anywhere in clear (a parked message, a log line)."""
        return secret_fields(self.payload)

    @property
    def guarded(self) -> bool:
        """Whether the command carries a token (every one but the public ones)."""
        return self.policy.needs_token


@dataclass(frozen=True, slots=True)
class EventDeclaration:
    """One event: its model, the one service that may publish it and the services that hear it."""

    name: str
    model: type[BaseModel]
    owner: Service
    consumers: tuple[Service, ...] = ()
    summary: str = ""
    #: The fields anyone may see: a public event's are relayed on `GET /live` and drive the
    #: gateway's read cache. Deny by default: an event that names none never leaves the services.
    public: tuple[str, ...] = ()
