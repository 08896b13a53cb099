"""Authorization: may this caller do this?

The only module that decides. `require_user`, `require_admin`, `require_owner` and
`require_owner_or_admin` are the checks; each policy wraps one of them, so that a command is
declared *with* its policy (shared/commands.py) and the runner applies it before the handler
runs. There is no default policy: a declaration without one cannot be built, so a new command
cannot forget to check. Authentication (who is calling) lives in `tokens.py` and `revocation.py`.

    PUBLIC                          anyone, no token read
    USER                            any signed-in, unbanned, unrevoked caller
    ADMIN                           a caller whose token says role=admin
    Owner(resource, action=…)       the owner of the resource the payload names, and nobody
                                    else: an admin who is not the owner is refused too
    OwnerOrAdmin(resource, action=…) the owner of the resource, or an admin

Every policy has one interface, `authorize(caller, payload, conn)`, and describes itself: which
parties it lets through (`grants`) and which it turns away and how (`refusals`), so the injection
matrix (tests/test_every_command_is_guarded.py) enumerates the refusals of any command from its
declaration. Adding a policy is one class here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from shared.database import Connection
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.roles import Role
from shared.tokens import Caller


def require_user(caller: Caller | None) -> Caller:
    """The caller, who must be signed in."""
    if caller is None:
        raise Unauthorized("You need to sign in to do this")
    return caller


def require_admin(caller: Caller | None) -> Caller:
    """The caller, who must be an admin."""
    caller = require_user(caller)
    if not caller.is_admin:
        raise Forbidden("Only an admin can do this")
    return caller


def require_owner(caller: Caller | None, owner_id: UUID, *, action: str = "change this resource") -> Caller:
    """The caller, who must own the resource; being an admin is not enough."""
    caller = require_user(caller)
    if caller.subject != owner_id:
        raise Forbidden(f"You do not have permission to {action}")
    return caller


def require_owner_or_admin(caller: Caller | None, owner_id: UUID, *, action: str = "change this resource") -> Caller:
    """The caller, who must own the resource or be an admin."""
    caller = require_user(caller)
    if caller.subject != owner_id and not caller.is_admin:
        raise Forbidden(f"You do not have permission to {action}")
    return caller


@dataclass(frozen=True, slots=True)
class Resource:
    """Something a payload names by id that has an owner, in the owning service's schema.

    The owner lookup is one statement on the command's own connection, locking the row until
    the command's transaction ends, so the owner cannot change between the check and the effect.
    A missing row is NotFound: existence is checked before ownership, as the lesson teaches.
    """

    name: str  # "post": "No post with that id"
    service: str  # whose schema holds the table
    table: str
    id_field: str  # the payload field that names it
    owner_column: str

    def __post_init__(self) -> None:
        for part in (self.table, self.owner_column):
            if not part.isidentifier():  # they are interpolated into SQL: identifiers only
                raise ValueError(f"{part!r} is not an SQL identifier")

    def id_of(self, payload: Any) -> UUID:
        return getattr(payload, self.id_field)  # type: ignore[no-any-return]

    def owner_sql(self, id_param: str, *, provided: str | None = None) -> str:
        """The statement that locks the row named at `id_param` and yields its `owner`: run alone
        by `owner`, or as a CTE of the command's opening statement (shared/bookkeeping.py), where
        `provided` makes it wait for the message's claim."""
        condition = f"id = {id_param}" + (f" AND {provided}" if provided else "")
        return f"SELECT {self.owner_column} AS owner FROM {self.table} WHERE {condition} FOR UPDATE"

    async def owner(self, conn: Connection, payload: Any) -> UUID:
        return self.found(await conn.fetchval(self.owner_sql("$1"), self.id_of(payload)))

    def found(self, owner: UUID | None) -> UUID:
        """The owner a lookup found; a missing row (no owner) is NotFound."""
        if owner is None:
            raise NotFound(f"No {self.name} with that id")
        return owner


@dataclass(frozen=True, slots=True)
class Party:
    """A kind of caller, as tests build one: a role, and whether they own the resource."""

    role: Role
    owns: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A party a policy turns away from an existing resource, with the status it answers."""

    case: str
    party: Party
    status: int = 403


class Policy(ABC):
    """What a command demands of its caller."""

    #: How the policy shows in the audit trail and the documents.
    name: str
    #: Whether the runner reads and verifies a token before the policy runs.
    needs_token: bool = True
    #: Who gets through (the first is the one the matrix's positive control uses).
    grants: tuple[Party, ...] = ()
    #: Who is turned away, beyond a missing or bad credential, and how.
    refusals: tuple[Refusal, ...] = ()
    #: The resource whose owner matters, for owner policies.
    resource: Resource | None = None

    @abstractmethod
    async def authorize(self, caller: Caller | None, payload: Any, conn: Connection | None) -> None:
        """Raise Unauthorized, Forbidden or NotFound unless the caller may go ahead."""

    def authorize_owner(self, caller: Caller | None, owner: UUID | None) -> None:
        """`authorize`, given the owner of `resource` (None: no such row); owner policies only."""
        raise TypeError(f"the {self.name} policy has no resource to own")

    def describe(self) -> str:
        """Who may, in a sentence for the documents."""
        return self.name

    def __repr__(self) -> str:
        return f"<policy {self.name}>"


class _Public(Policy):
    name = "public"
    needs_token = False
    grants = (Party(Role.USER),)

    async def authorize(self, caller: Caller | None, payload: Any, conn: Connection | None) -> None:
        return None

    def describe(self) -> str:
        return "Anyone."


class _User(Policy):
    name = "user"
    grants = (Party(Role.USER),)

    async def authorize(self, caller: Caller | None, payload: Any, conn: Connection | None) -> None:
        require_user(caller)

    def describe(self) -> str:
        return "Any signed-in caller who is not banned."


class _Admin(Policy):
    name = "admin"
    grants = (Party(Role.ADMIN),)
    refusals = (Refusal("a plain user", Party(Role.USER)),)

    async def authorize(self, caller: Caller | None, payload: Any, conn: Connection | None) -> None:
        require_admin(caller)

    def describe(self) -> str:
        return "Admins only."


class _OwnerPolicy(Policy):
    """Shared by the two owner policies: the lookup comes first, so a missing resource is a 404."""

    def __init__(self, resource: Resource, *, action: str) -> None:
        self.resource = resource
        self.action = action

    async def authorize(self, caller: Caller | None, payload: Any, conn: Connection | None) -> None:
        caller = require_user(caller)
        assert self.resource is not None and conn is not None
        self.check(caller, await self.resource.owner(conn, payload))

    def authorize_owner(self, caller: Caller | None, owner: UUID | None) -> None:
        """`authorize` with the owner already looked up (and the row locked) by the command's
        opening statement: the same checks in the same order, one round trip fewer."""
        caller = require_user(caller)
        assert self.resource is not None
        self.check(caller, self.resource.found(owner))

    @abstractmethod
    def check(self, caller: Caller, owner: UUID) -> None: ...


class Owner(_OwnerPolicy):
    """The owner of the resource only: an admin who is not the owner is refused."""

    name = "owner"
    grants = (Party(Role.USER, owns=True),)
    refusals = (
        Refusal("another user", Party(Role.USER)),
        Refusal("an admin who is not the owner", Party(Role.ADMIN)),
    )

    def check(self, caller: Caller, owner: UUID) -> None:
        require_owner(caller, owner, action=self.action)

    def describe(self) -> str:
        return f"Only the {self.resource.name if self.resource else 'resource'}'s owner; an admin who is not the owner is refused."


class OwnerOrAdmin(_OwnerPolicy):
    """The owner of the resource, or an admin."""

    name = "owner_or_admin"
    grants = (Party(Role.USER, owns=True), Party(Role.ADMIN))
    refusals = (Refusal("another user", Party(Role.USER)),)

    def check(self, caller: Caller, owner: UUID) -> None:
        require_owner_or_admin(caller, owner, action=self.action)

    def describe(self) -> str:
        return f"The {self.resource.name if self.resource else 'resource'}'s owner or an admin."


PUBLIC: Policy = _Public()
USER: Policy = _User()
ADMIN: Policy = _Admin()
