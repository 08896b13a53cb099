"""Deny by default: every command is declared with a policy, and each policy does what it says.

A policy describes its own refusals and grants (`Policy.refusals`, `Policy.grants`), which the
injection matrix trusts to enumerate what to inject; the tests here hold every policy's
description to its behaviour, so the matrix cannot be told a refusal the policy does not make.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

import auth_service.service
import posts_service.service
import users_service.service
from shared.authorization import (
    ADMIN,
    PUBLIC,
    USER,
    Owner,
    OwnerOrAdmin,
    Party,
    Policy,
    Resource,
    require_admin,
    require_owner,
    require_owner_or_admin,
    require_user,
)
from shared.commands import COMMANDS, POST, EditPost, GetPost, commands_of
from shared.declarations import POSTS, SERVICE_NAMES, Command, Http
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.roles import ROLES, Role
from shared.routes import CommandRoute, UndeclaredPolicyError, WiringError, bind_commands, check_routes
from shared.settings import Settings
from shared.tokens import Caller

pytestmark = pytest.mark.unit

#: Every policy there is, with a resource for the owner policies.
POLICIES: list[Policy] = [PUBLIC, USER, ADMIN, Owner(POST, action="edit this post"), OwnerOrAdmin(POST, action="delete this post")]


def caller(role: Role = Role.USER, subject: UUID | None = None) -> Caller:
    return Caller(subject=subject or uuid4(), session_id=uuid4(), role=role, token_id="t", expires_at=0)


class OwnerRow:
    """A connection whose one row (the resource) is owned by `owner`, or missing when None."""

    def __init__(self, owner: UUID | None) -> None:
        self.owner = owner
        self.statements: list[str] = []

    async def fetchval(self, sql: str, *_args: Any) -> UUID | None:
        self.statements.append(sql)
        return self.owner


async def noop(*_: object) -> None:
    return None


def authorize(policy: Policy, who: Caller | None, conn: OwnerRow | None = None) -> None:
    asyncio.run(policy.authorize(who, EditPost(post_id=uuid4(), title="t"), conn))  # type: ignore[arg-type]


# -- declarations --------------------------------------------------------------------------------


def test_a_command_cannot_be_declared_without_a_policy() -> None:
    with pytest.raises(TypeError):
        Command("pin-post", POSTS, GetPost, None, summary="Pin")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no authorization policy"):
        Command("pin-post", POSTS, GetPost, None, None, "Pin")  # type: ignore[arg-type]


def test_a_half_built_policy_cannot_exist() -> None:
    class Forgetful(Policy):
        name = "forgetful"

    with pytest.raises(TypeError):
        Forgetful()  # type: ignore[abstract]


def test_a_route_whose_policy_is_not_a_policy_stops_the_service() -> None:
    declared = COMMANDS["delete-post"]
    forged = dataclasses.replace(declared)
    object.__setattr__(forged, "policy", None)
    with pytest.raises(UndeclaredPolicyError):
        check_routes([CommandRoute(forged, noop)])


@pytest.mark.parametrize(("policy", "replays"), [(USER, False), (ADMIN, False), (PUBLIC, True)], ids=["user", "admin", "replaying"])
def test_only_a_public_read_may_skip_its_transaction(policy: Policy, replays: bool) -> None:
    """Skipping the transaction skips the session check, the claim and the audit row with it."""
    with pytest.raises(ValueError, match="skip its transaction"):
        Command("get-post", POSTS, GetPost, None, policy, "x", public_read=True, replays=replays)
    assert Command("get-post", POSTS, GetPost, None, PUBLIC, "x", public_read=True, replays=False).public_read


def test_a_path_field_must_be_a_payload_field() -> None:
    with pytest.raises(ValueError, match="not payload fields"):
        Command("get-post", POSTS, GetPost, None, PUBLIC, "x", http=Http("GET", "/posts/{id}"))


def test_a_service_must_bind_exactly_its_declared_commands() -> None:
    handlers = {c.name: noop for c in commands_of("posts") if not c.name.startswith("list-audit")}
    assert {r.name for r in bind_commands("posts", handlers)} == set(handlers)
    with pytest.raises(WiringError, match=r"no handler for \['edit-post'\]"):
        bind_commands("posts", {k: v for k, v in handlers.items() if k != "edit-post"})
    with pytest.raises(WiringError, match="not declared for it"):
        bind_commands("posts", {**handlers, "ban-user": noop})
    with pytest.raises(WiringError, match="not declared for it"):
        bind_commands("posts", {**handlers, "drop-tables": noop})


def test_every_service_binds_its_declarations() -> None:
    settings = Settings.from_env({})

    async def wirings() -> list[Any]:
        # auth_service's wiring needs a signing key from the database; its binding is checked
        # end to end by the broker tests.
        return [await posts_service.service.wire(settings, None), await users_service.service.wire(settings, None)]  # type: ignore[arg-type]

    for wiring in asyncio.run(wirings()):
        for route in check_routes(wiring.commands).values():
            assert route.declaration is COMMANDS[route.name]
    assert auth_service.service.NAME in SERVICE_NAMES


def test_the_contract_commands_have_the_contract_policies() -> None:
    policy = {name: c.policy for name, c in COMMANDS.items()}
    assert policy["ban-user"] is ADMIN and policy["create-post"] is USER and policy["logout"] is USER
    assert isinstance(policy["delete-post"], OwnerOrAdmin) and isinstance(policy["edit-post"], Owner)
    assert {name for name, p in policy.items() if p is PUBLIC} == {"register", "login", "refresh", "get-post", "list-posts", "get-user"}
    assert all(policy[f"list-audit.{s}"] is ADMIN for s in SERVICE_NAMES)


def test_roles_are_the_tokens_roles() -> None:
    assert ROLES == ("user", "admin")
    assert caller(Role.ADMIN).is_admin and not caller(Role.USER).is_admin


# -- each policy does what it declares -----------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_every_declared_refusal_is_refused(policy: Policy) -> None:
    for refusal in policy.refusals:
        owner = uuid4()
        who = caller(refusal.party.role, owner if refusal.party.owns else None)
        with pytest.raises(Forbidden) as refused:
            authorize(policy, who, OwnerRow(owner))
        assert refused.value.status == refusal.status, refusal.case


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_every_declared_grant_gets_through(policy: Policy) -> None:
    assert policy.grants, f"{policy.name} lets nobody through"
    for party in policy.grants:
        owner = uuid4()
        authorize(policy, caller(party.role, owner if party.owns else None), OwnerRow(owner))


@pytest.mark.parametrize("policy", [p for p in POLICIES if p.needs_token], ids=lambda p: p.name)
def test_every_guarded_policy_refuses_anonymous(policy: Policy) -> None:
    with pytest.raises(Unauthorized):
        authorize(policy, None, OwnerRow(uuid4()))


def test_owner_refuses_an_admin_who_is_not_the_owner() -> None:
    policy = Owner(POST, action="edit this post")
    with pytest.raises(Forbidden, match="permission to edit this post"):
        authorize(policy, caller(Role.ADMIN), OwnerRow(uuid4()))
    assert Party(Role.ADMIN) in [r.party for r in policy.refusals]


@pytest.mark.parametrize("policy", [p for p in POLICIES if p.resource is not None], ids=lambda p: p.name)
def test_owner_policies_look_the_resource_up_first_and_lock_it(policy: Policy) -> None:
    conn = OwnerRow(None)
    with pytest.raises(NotFound, match="No post with that id"):
        authorize(policy, caller(Role.ADMIN), conn)
    assert conn.statements == ["SELECT author_id AS owner FROM posts WHERE id = $1 FOR UPDATE"]


@pytest.mark.parametrize("policy", [p for p in POLICIES if p.resource is not None], ids=lambda p: p.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize("owns", [True, False, None], ids=["owner", "not-owner", "missing"])
def test_an_owner_read_by_the_opening_statement_gets_the_same_verdict(policy: Policy, role: Role, owns: bool | None) -> None:
    """The runner hands an owner policy the owner its opening statement read (shared/bookkeeping.py):
    every caller gets the same verdict as from the policy's own lookup."""
    who = caller(role)
    owner = None if owns is None else (who.subject if owns else uuid4())

    def verdict(run: Callable[[], object]) -> str:
        try:
            run()
        except (Unauthorized, Forbidden, NotFound) as exc:
            return type(exc).__name__
        return "allowed"

    looked_up = verdict(lambda: authorize(policy, who, OwnerRow(owner)))
    assert verdict(lambda: policy.authorize_owner(who, owner)) == looked_up
    assert verdict(lambda: policy.authorize_owner(None, owner)) == "Unauthorized"


def test_a_resource_takes_only_identifiers_into_its_sql() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Resource("post", service="posts", table="posts; DROP TABLE posts", id_field="post_id", owner_column="author_id")


# -- the checks themselves -----------------------------------------------------------------------


def test_require_user_refuses_anonymous() -> None:
    with pytest.raises(Unauthorized):
        require_user(None)


def test_require_admin_refuses_a_user() -> None:
    with pytest.raises(Forbidden):
        require_admin(caller(Role.USER))
    assert require_admin(caller(Role.ADMIN)).is_admin


def test_require_owner_or_admin() -> None:
    owner = caller()
    assert require_owner_or_admin(owner, owner.subject) is owner
    assert require_owner_or_admin(caller(Role.ADMIN), owner.subject).is_admin
    with pytest.raises(Forbidden, match="permission"):
        require_owner_or_admin(caller(), owner.subject)


def test_require_owner() -> None:
    owner = caller()
    assert require_owner(owner, owner.subject) is owner
    with pytest.raises(Forbidden, match="permission"):
        require_owner(caller(Role.ADMIN), owner.subject)
