"""Authorization: may this caller do this?

The only module that decides. `require_user`, `require_admin` and `require_owner_or_admin` are the
checks; `Policy` objects wrap them so that a command handler is registered *with* its policy and
the runner applies it before the handler runs. There is no default policy: a route without one
cannot be built, so a new command cannot forget to check. Authentication (who is calling) lives in
`tokens.py` and `revocation.py`.

    PUBLIC                      anyone, no token read
    USER                        any signed-in, unbanned, unrevoked caller
    ADMIN                       a caller whose token says role=admin
    OwnerOrAdmin(load_owner, …) the owner of the resource `load_owner` finds, or an admin;
                                `load_owner` raises NotFound when there is no such resource
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from shared.errors import Forbidden, Unauthorized
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


def require_owner_or_admin(caller: Caller | None, owner_id: UUID, *, action: str = "change this resource") -> Caller:
    """The caller, who must own the resource or be an admin."""
    caller = require_user(caller)
    if caller.subject != owner_id and not caller.is_admin:
        raise Forbidden(f"You do not have permission to {action}")
    return caller


#: Finds the owner of the resource a payload names, on the command's own connection.
OwnerLoader = Callable[[Any, Any], Awaitable[UUID]]


@dataclass(frozen=True, slots=True)
class Policy:
    """What a command demands of its caller. Build one of the four below, never this directly."""

    name: str
    needs_token: bool
    load_owner: OwnerLoader | None = None
    action: str = "change this resource"

    async def authorize(self, caller: Caller | None, payload: Any, conn: Any) -> None:
        """Raise Unauthorized, Forbidden or NotFound unless the caller may go ahead."""
        if self.name == "public":
            return
        if self.name == "user":
            require_user(caller)
        elif self.name == "admin":
            require_admin(caller)
        elif self.name == "owner_or_admin" and self.load_owner is not None:
            require_user(caller)
            owner = await self.load_owner(conn, payload)
            require_owner_or_admin(caller, owner, action=self.action)
        else:  # deny by default: an unknown or half-built policy never lets anyone through
            raise Forbidden("This action is not allowed")


PUBLIC = Policy("public", needs_token=False)
USER = Policy("user", needs_token=True)
ADMIN = Policy("admin", needs_token=True)


def OwnerOrAdmin(load_owner: OwnerLoader, *, action: str) -> Policy:  # noqa: N802 - reads like a policy constant
    """The owner of what `load_owner` finds, or an admin. `action` completes
    "You do not have permission to …" in the refusal."""
    return Policy("owner_or_admin", needs_token=True, load_owner=load_owner, action=action)
