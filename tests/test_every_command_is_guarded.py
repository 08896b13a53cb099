"""The injection matrix: every guarded command, straight into RabbitMQ past the gateway, with every
bad credential and every refusal its policy declares, is refused and changes nothing.

Nothing here names a command. The matrix is derived from the declarations
(`shared.commands.COMMANDS`): a command is covered the moment it is declared, with no new test
code, and each test id names the command and the credential (`edit-post-expired`).

- The sample payload of a command comes from its model: each field that names a resource
  (`post_id`, `user_id`, `session_id`: `shared.commands.RESOURCES`) gets one made for the occasion, owned by
  whoever the case needs; the other fields take their `examples` or their defaults.
- The holder of a credential is the party the command's policy grants first (`Policy.grants`:
  the owner, or an admin), so every refusal is the credential's doing. Each credential kind —
  the forge's flawed tokens (missing, malformed, `alg` none, HS256 with the public key, a foreign
  key under the real kid, expired), a wrong `typ`, a forged signature, a missing claim, a wrong
  `iss` or `aud`, a token expired past the leeway, a logged-out session, a banned account and a
  demoted admin — must be refused with the contract's status (401, or 403 for a ban).
- Each refusal the policy declares (`Policy.refusals`: another user; an admin who is not the
  owner, for Owner; a plain user, for ADMIN) is injected with a real, valid token of that party.

Every refusal must leave no row of any table in the services' schemas changed (audit_log aside)
and exactly one `denied` row for its message in the deciding service's audit_log. A positive
control runs each command for each party its policy grants, so a refusal is never a broken payload
in disguise. "Nothing changed" is a fingerprint of every table, listed from information_schema,
so a new command's tables are covered without anyone remembering to add them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

import auth_service.service
import posts_service.service
import users_service.service
from shared.audit import audit_route
from shared.authorization import Party, Policy
from shared.commands import COMMANDS, RESOURCES, commands_of
from shared.database import create_pool
from shared.declarations import Command
from shared.events import EVENTS
from shared.roles import Role
from shared.routes import check_routes
from shared.service import WireFn
from shared.settings import Settings
from tests.support.accounts import User, login, make_admin, register, token_claims
from tests.support.broker import BrokerProbe
from tests.support.fingerprint import changed_tables, fingerprint, settled_fingerprint
from tests.support.forge import BAD_TOKENS, TokenForge
from tests.support.stack import Stack

WaitUntil = Callable[..., Awaitable[Any]]

#: Every service's wiring, by the schema it owns (its NAME).
WIRES: dict[str, WireFn] = {
    auth_service.service.NAME: auth_service.service.wire,
    users_service.service.NAME: users_service.service.wire,
    posts_service.service.NAME: posts_service.service.wire,
}
#: The commands the contract lets anyone send without a token (docs/CONTRACT.md).
CONTRACT_PUBLIC = frozenset({"register", "login", "refresh", "get-post", "list-posts", "get-user"})
GUARDED: list[Command] = [c for c in COMMANDS.values() if c.guarded]

# -- the credentials -----------------------------------------------------------------------------

FORGED = BAD_TOKENS
WRONG_TYP = "wrong typ"
FORGED_SIGNATURE = "forged signature"
MISSING_CLAIM = "missing sid claim"
EXPIRED_PAST_LEEWAY = "expired 10 s ago"
LOGGED_OUT = "logged out"
BANNED = "banned"
DEMOTED = "demoted admin"
CREDENTIALS = (*FORGED, WRONG_TYP, FORGED_SIGNATURE, MISSING_CLAIM, EXPIRED_PAST_LEEWAY, LOGGED_OUT, BANNED, DEMOTED)
STATUS = {**dict.fromkeys(CREDENTIALS, 401), BANNED: 403}


def flawed_tokens(forge: TokenForge, holder: User, role: str) -> dict[str, str | None]:
    """Every way a token of the holder's real sub and sid, claiming its real role, can be wrong
    without touching the session."""
    now = int(time.time())
    tokens = forge.bad_tokens(holder.id, holder.session_id, role=role)
    good = forge.claims(holder.id, holder.session_id, role=role)
    tokens[WRONG_TYP] = forge.sign(good, headers={"typ": "JWT"})
    header, _, signature = forge.sign(good).split(".")
    tampered = base64.urlsafe_b64encode(json.dumps({**good, "role": "admin", "sub": str(uuid4())}).encode()).rstrip(b"=").decode()
    tokens[FORGED_SIGNATURE] = f"{header}.{tampered}.{signature}"
    tokens[MISSING_CLAIM] = forge.sign({k: v for k, v in good.items() if k != "sid"})
    tokens[EXPIRED_PAST_LEEWAY] = forge.sign(forge.claims(holder.id, holder.session_id, role=role, iat=now - 610, exp=now - 10))
    return tokens


# -- the cases, derived from the declarations ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    command: Command
    credential: str  # a CREDENTIALS name, or the case of one of the policy's refusals
    party: Party  # who holds the credential
    status: int

    @property
    def id(self) -> str:
        return f"{self.command.name}-{self.credential.replace(' ', '-')}"


def cases() -> list[Case]:
    found: list[Case] = []
    for command in GUARDED:
        policy: Policy = command.policy
        granted = policy.grants[0]
        found.extend(Case(command, credential, granted, STATUS[credential]) for credential in CREDENTIALS)
        found.extend(Case(command, refusal.case, refusal.party, refusal.status) for refusal in policy.refusals)
    return found


CASES = cases()

# -- sample payloads, from the models ------------------------------------------------------------


@dataclass
class World:
    """What the matrix needs to make people and things."""

    http: aiohttp.ClientSession
    db: asyncpg.Pool
    broker: BrokerProbe
    forge: TokenForge
    stack: Stack
    admin: User
    wait_until: WaitUntil

    async def party(self, party: Party, *, fresh: bool = False) -> User:
        """A signed-in user of the party's role (a fresh admin when asked: one the test will change)."""
        if party.role is Role.ADMIN:
            return await make_admin(self.http, self.stack) if fresh else self.admin
        return await register(self.http, "holder")

    async def wait_for_profile(self, user: User) -> None:
        async def exists() -> bool:
            return await self.db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", user.id)

        await self.wait_until(exists, timeout=5.0)

    async def a_post(self, owner: User) -> str:
        async with self.http.post("/posts", json={"title": "Mine", "body": "Hands off"}, headers=owner.auth) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["id"])

    async def a_user(self, owner: User) -> str:
        await self.wait_for_profile(owner)
        return owner.id

    async def a_session(self, owner: User) -> str:
        # A second session of the owner's, not the one the holder's token carries: ending that one
        # in the positive control would sign the holder out of the cases that follow.
        return str(token_claims(await login(self.http, owner.email, owner.password))["sid"])

    async def resource(self, name: str, owner: User) -> str:
        """A new resource of kind `name` owned by `owner`, by its id."""
        makers: dict[str, Callable[[User], Awaitable[str]]] = {"post": self.a_post, "user": self.a_user, "session": self.a_session}
        assert name in makers, f"no maker for the resource {name!r}: add one to World.resource"
        return await makers[name](owner)

    async def sample(self, command: Command, owner: User | None) -> dict[str, Any]:
        """A valid payload of the command whose resources `owner` owns (None: a new victim)."""
        payload: dict[str, Any] = {}
        by_field = {r.id_field: r.name for r in RESOURCES}
        for name, field in command.payload.model_fields.items():
            if name in by_field:
                owner = owner or await register(self.http, "victim")
                payload[name] = await self.resource(by_field[name], owner)
            elif field.examples:
                payload[name] = field.examples[0]
            elif field.is_required():
                payload[name] = example_of(field.annotation)
        command.payload.model_validate_json(json.dumps(payload))  # as the service reads it; refused: this module's bug
        return payload


def example_of(annotation: Any) -> Any:
    """A value of a required field without `examples`: give the field examples if this fails."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)[0]
    simple = {str: "sample", int: 1, bool: False, float: 1.0}
    assert annotation in simple, f"no example for a field of type {annotation!r}: add `examples` to its Field"
    return simple[annotation]


@pytest.fixture(scope="module")
async def admin(http: aiohttp.ClientSession, stack: Stack) -> User:
    return await make_admin(http, stack)


@pytest.fixture
def world(
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    broker: BrokerProbe,
    forge: TokenForge,
    stack: Stack,
    admin: User,
    wait_until: WaitUntil,
) -> World:
    return World(http, db, broker, forge, stack, admin, wait_until)


# -- setting up a credential ---------------------------------------------------------------------


async def logged_out_token(world: World, holder: User, schema: str) -> str:
    """A real token of a second session of `holder`, logged out through the gateway."""
    token = await login(world.http, holder.email, holder.password)
    async with world.http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 204, await response.text()
    await revoked_in(world, token_claims(token)["sid"], schema)
    return token


async def revoked_in(world: World, sid: str, schema: str) -> None:
    """Wait until every service that hears `session.revoked` has applied it, not only `schema`'s:
    a consumer applying it after the "before" fingerprint would look like the refused command's doing."""
    schemas = {schema, *(service.name for service in EVENTS["session.revoked"].consumers)}

    async def revoked_everywhere() -> bool:
        found = [await world.db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.revoked_sessions WHERE session_id = $1)", sid) for s in schemas]
        return all(found)

    await world.wait_until(revoked_everywhere, timeout=10.0)


async def ban(world: World, user: User, schema: str) -> None:
    await world.wait_for_profile(user)
    async with world.http.post(f"/users/{user.id}/ban", json={"reason": "test"}, headers=world.admin.auth) as response:
        assert response.status == 200, await response.text()

    schemas = {schema, *(service.name for service in EVENTS["user.banned"].consumers)}

    async def banned_everywhere() -> bool:
        found = [await world.db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.banned_accounts WHERE user_id = $1)", user.id) for s in schemas]
        return all(found)

    await world.wait_until(banned_everywhere, timeout=10.0)


async def demote(world: World, admin: User, schema: str) -> None:
    result = world.stack.run_cli("set-role", admin.email, "user")
    assert result.returncode == 0, result.stderr
    await revoked_in(world, admin.session_id, schema)


async def prepare(world: World, case: Case) -> tuple[dict[str, Any], str | None]:
    """The payload and the credential of a case, with everything they need in place."""
    schema = case.command.service.name
    # A holder the case changes (banned, demoted) is made for it; a demoted admin is an admin first.
    party = Party(Role.ADMIN, case.party.owns) if case.credential == DEMOTED else case.party
    holder = await world.party(party, fresh=case.credential in (BANNED, DEMOTED))
    payload = await world.sample(case.command, holder if case.party.owns else None)
    if case.credential == LOGGED_OUT:
        return payload, await logged_out_token(world, holder, schema)
    if case.credential == BANNED:
        await ban(world, holder, schema)
        return payload, holder.token
    if case.credential == DEMOTED:
        await demote(world, holder, schema)
        return payload, holder.token
    if case.credential in STATUS:
        return payload, flawed_tokens(world.forge, holder, party.role.value)[case.credential]
    return payload, holder.token  # one of the policy's refusals: a real, valid token


# -- the tests -----------------------------------------------------------------------------------


def test_every_guarded_command_is_in_the_matrix() -> None:
    named = {case.command.name for case in CASES}
    assert named == {c.name for c in GUARDED} and named, "a guarded command has no case"
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_public_commands_are_the_contracts() -> None:
    unexpected = sorted(name for name, c in COMMANDS.items() if not c.guarded and name not in CONTRACT_PUBLIC)
    assert not unexpected, (
        f"declared PUBLIC but not public in the contract: {unexpected}. A public command reads no token; "
        "if that is really intended, change the contract and CONTRACT_PUBLIC"
    )


async def test_the_running_services_serve_exactly_the_declarations(stack: Stack) -> None:
    """What the matrix injects is what the stack consumes: each service's own wiring, as
    `shared.service.serve` assembles it, against the declarations."""
    settings = Settings.from_env(stack.env)
    for service, wire in WIRES.items():
        pool = await create_pool(settings.database_url, service, min_size=1, max_size=2)
        try:
            wiring = await wire(settings, pool)
            for close in wiring.closers:  # what the service opened for itself (auth's rate-limit pool)
                await close()
        finally:
            await pool.close()
        table = check_routes([*wiring.commands, audit_route(service)])
        assert {name: route.declaration for name, route in table.items()} == {c.name: c for c in commands_of(service)}


@pytest.mark.parametrize("command", GUARDED, ids=lambda c: c.name)
async def test_each_granted_party_runs_the_sample(command: Command, world: World) -> None:
    """Positive control: every party the policy grants runs the sample with a valid token."""
    for party in command.policy.grants:
        holder = await world.party(party)
        payload = await world.sample(command, holder if party.owns else None)
        reply = await world.broker.command(command.name, payload, token=holder.token)
        assert reply is not None and reply.get("ok") is True, f"{party} could not run the sample {payload}: {reply}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_injected_and_refused(case: Case, world: World) -> None:
    """Straight into RabbitMQ: refused with the contract's status, audited, and nothing changed."""
    payload, token = await prepare(world, case)
    before = await settled_fingerprint(world.db)
    message_id = str(uuid4())

    reply = await world.broker.command(case.command.name, payload, token=token, message_id=message_id)

    assert reply is not None and reply.get("ok") is False, f"expected a {case.status} refusal, the command ran: {reply}"
    assert reply["error"]["status"] == case.status, f"expected status {case.status}, got {reply['error']}"
    await asyncio.sleep(0.3)
    after = await fingerprint(world.db, like=before)
    assert after == before, f"refused, but it changed {changed_tables(before, after)}"
    schema = case.command.service.name
    denied = await world.db.fetchval(
        f"SELECT count(*) FROM {schema}.audit_log WHERE decision = 'denied' AND command = $1 AND message_id = $2",
        case.command.name,
        message_id,
    )
    assert denied == 1, f"expected one 'denied' row in {schema}.audit_log for message {message_id}, found {denied}"
