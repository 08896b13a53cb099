"""Deny by default: every command is registered with a policy, and the policies decide correctly."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

import auth_service.service
import posts_service.service
import users_service.service
from shared.authorization import ADMIN, PUBLIC, USER, OwnerOrAdmin, Policy, require_admin, require_owner_or_admin, require_user
from shared.commands import COMMAND_PAYLOADS
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.routes import UndeclaredPolicyError, check_routes, command
from shared.settings import Settings
from shared.tokens import Caller

pytestmark = pytest.mark.unit


def caller(role: str = "user") -> Caller:
    return Caller(subject=uuid4(), session_id=uuid4(), role=role, token_id="t", expires_at=0)  # type: ignore[arg-type]


async def noop(*_: object) -> None:
    return None


def test_a_command_cannot_be_registered_without_a_policy() -> None:
    with pytest.raises(TypeError):
        command("delete-post", noop)  # type: ignore[call-arg]


def test_a_route_whose_policy_is_not_a_policy_stops_the_service() -> None:
    route = command("delete-post", noop, policy=USER)
    forged = type(route)(route.name, route.handler, None, route.payload, True)  # type: ignore[arg-type]
    with pytest.raises(UndeclaredPolicyError):
        check_routes([forged])


@pytest.mark.parametrize(
    ("policy", "replays"), [(USER, False), (ADMIN, False), (PUBLIC, True)], ids=["user", "admin", "replaying"]
)
def test_only_a_public_read_may_skip_its_transaction(policy: Policy, replays: bool) -> None:
    """Skipping the transaction skips the session check, the claim and the audit row with it."""
    with pytest.raises(ValueError, match="skip its transaction"):
        check_routes([command("get-post", noop, policy=policy, replays=replays, reads_only=True)])
    assert check_routes([command("get-post", noop, policy=PUBLIC, replays=False, reads_only=True)])


def test_a_command_outside_the_contract_cannot_be_registered() -> None:
    with pytest.raises(ValueError):
        command("drop-tables", noop, policy=ADMIN)


def test_an_unknown_policy_denies_everyone() -> None:
    weird = Policy("something-new", needs_token=True)
    with pytest.raises(Forbidden):
        asyncio.run(weird.authorize(caller("admin"), None, None))


def test_every_contract_command_is_served_once_with_a_declared_policy() -> None:
    settings = Settings.from_env({})
    served: dict[str, Policy] = {}
    wirings = [
        # auth_service's wiring needs a signing key from the database; its routes are checked
        # end to end by the broker tests, and its policy table is read here from the module.
        posts_service.service.wire(settings, None),  # type: ignore[arg-type]
        users_service.service.wire(settings, None),  # type: ignore[arg-type]
    ]
    for wiring in asyncio.run(_gather(wirings)):
        for route in check_routes(wiring.commands).values():
            assert route.name not in served
            served[route.name] = route.policy
    assert {"create-post", "get-post", "list-posts", "delete-post", "get-user", "ban-user"} <= set(served)
    assert served["ban-user"] is ADMIN and served["create-post"] is USER
    assert served["delete-post"].name == "owner_or_admin"
    assert served["get-post"] is PUBLIC and served["list-posts"] is PUBLIC and served["get-user"] is PUBLIC
    assert set(served) | {"register", "login", "logout", "get-me"} == set(COMMAND_PAYLOADS)
    assert auth_service.service.NAME == "auth"


async def _gather(coros):  # noqa: ANN001, ANN202
    return await asyncio.gather(*coros)


def test_require_user_refuses_anonymous() -> None:
    with pytest.raises(Unauthorized):
        require_user(None)


def test_require_admin_refuses_a_user() -> None:
    with pytest.raises(Forbidden):
        require_admin(caller("user"))
    assert require_admin(caller("admin")).is_admin


def test_require_owner_or_admin() -> None:
    owner = caller()
    assert require_owner_or_admin(owner, owner.subject) is owner
    assert require_owner_or_admin(caller("admin"), owner.subject).is_admin
    with pytest.raises(Forbidden, match="permission"):
        require_owner_or_admin(caller(), owner.subject)


def test_owner_or_admin_looks_the_resource_up_first() -> None:
    async def missing(_conn: object, _payload: object):  # noqa: ANN202
        raise NotFound("No post with that id")

    with pytest.raises(NotFound):
        asyncio.run(OwnerOrAdmin(missing, action="delete this post").authorize(caller(), None, None))
    with pytest.raises(Unauthorized):
        asyncio.run(OwnerOrAdmin(missing, action="delete this post").authorize(None, None, None))
