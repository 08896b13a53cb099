"""No command can be added without being guarded: the list of commands comes from the services.

The commands are not listed here. Each service's own `wire(settings, pool)` is called, exactly as
`shared.service.serve` does, and `shared.audit.audit_route(name)` is added for each service; what
comes back is every command the stack consumes. Then:

- a command under the PUBLIC policy must be one the contract makes public (`register`, `login`,
  `get-post`, `list-posts`, `get-user`), so declaring a new command public fails here until
  someone consciously adds it to `CONTRACT_PUBLIC`;
- every other command is published straight onto the `commands` exchange with every bad
  credential — each flawed token of `forge.bad_tokens()` plus one expired past the 5 s leeway, a
  logged-out session, a banned account and, for owner-or-admin and admin commands, another
  ordinary user — and must be refused with the exact status of the contract (401, or 403 for a
  banned account, a non-owner or a non-admin), change no row of any table in the `auth`, `users`
  and `posts` schemas (audit_log aside), and leave a `denied` row for it in the deciding
  service's `audit_log`.

"Nothing changed" is a fingerprint of every table, listed from information_schema, so it covers a
new command's tables without anyone remembering to add them (idempotency records a timer purges
are left out once due, so housekeeping is not mistaken for an effect). Each guarded command needs a valid
sample payload in `SAMPLES`; a command without one fails with a message saying so. A valid
credential runs every sample, so a refusal is never a broken payload in disguise.

The command list is only known once the stack runs, so each credential kind is one test that goes
through every command; every failure names the command and the credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

import auth_service.service
import posts_service.service
import users_service.service
from shared.audit import audit_command_name, audit_route
from shared.database import create_pool
from shared.routes import CommandRoute, check_routes
from shared.service import WireFn
from shared.settings import Settings
from support.accounts import User, login, make_admin, register, token_claims
from support.broker import BrokerProbe
from support.forge import TokenForge
from support.stack import Stack

WaitUntil = Callable[..., Awaitable[Any]]

#: Every service's wiring, by the schema it owns (its NAME).
WIRES: dict[str, WireFn] = {
    auth_service.service.NAME: auth_service.service.wire,
    users_service.service.NAME: users_service.service.wire,
    posts_service.service.NAME: posts_service.service.wire,
}
#: The commands the contract lets anyone send without a token.
CONTRACT_PUBLIC = frozenset({"register", "login", "get-post", "list-posts", "get-user"})

# -- "nothing changed": a fingerprint of every table ---------------------------------------------

SCHEMAS = ("auth", "users", "posts")
#: Tables a refusal is expected to write to: the denial is recorded there.
UNFINGERPRINTED = ("audit_log",)
#: Rows a service deletes on a timer, not in answer to a message: left out of the fingerprint
#: once they are due before the horizon, so housekeeping in the middle of a comparison (in a long
#: run, tokens from early tests expire) is not mistaken for an effect.
HOUSEKEPT = {"processed_commands": "expires_at"}
HORIZON = timedelta(minutes=2)


@dataclass(frozen=True)
class Fingerprint:
    digests: dict[str, str]  # md5 of each table's full contents, by `schema.table`
    horizon: datetime

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and self.digests == other.digests


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def fingerprint(db: asyncpg.Pool, *, like: Fingerprint | None = None) -> Fingerprint:
    """Every table in the services' schemas; `like` reuses an earlier fingerprint's horizon."""
    horizon = like.horizon if like is not None else datetime.now(UTC) + HORIZON
    async with db.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE' AND table_name <> ALL($2::text[])"
            " ORDER BY 1, 2",
            list(SCHEMAS), list(UNFINGERPRINTED),
        )
        assert tables, "no tables found in the services' schemas"

        def digest(schema: str, table: str) -> str:
            due = HOUSEKEPT.get(table)
            where = f" WHERE t.{_ident(due)} >= '{horizon.isoformat()}'::timestamptz" if due else ""
            return (
                f"SELECT '{schema}.{table}' AS name, (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f" FROM {_ident(schema)}.{_ident(table)} t{where}) AS digest"
            )

        rows = await conn.fetch(" UNION ALL ".join(digest(r["table_schema"], r["table_name"]) for r in tables))
    return Fingerprint({r["name"]: r["digest"] for r in rows}, horizon)


async def outboxes_empty(db: asyncpg.Pool) -> bool:
    async with db.acquire() as conn:
        return all([await conn.fetchval(f"SELECT count(*) = 0 FROM {schema}.outbox") for schema in SCHEMAS])


def changed_tables(before: Fingerprint, after: Fingerprint) -> list[str]:
    names = before.digests.keys() | after.digests.keys()
    return sorted(name for name in names if before.digests.get(name) != after.digests.get(name))


async def settled_fingerprint(db: asyncpg.Pool, *, like: Fingerprint | None = None, quiet: float = 0.2, timeout: float = 15.0) -> Fingerprint:
    """The fingerprint once setup's events have been relayed and consumed: every outbox empty
    and no table changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = await fingerprint(db, like=like)
    while True:
        await asyncio.sleep(quiet)
        current = await fingerprint(db, like=last)
        if current == last and await outboxes_empty(db):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the database never settled; still changing: {changed_tables(last, current)}")
        last = current


# -- the commands, from the services' own wiring -------------------------------------------------


@dataclass(frozen=True)
class ServiceRoute:
    service: str  # also the schema whose audit_log records the decision
    route: CommandRoute

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def public(self) -> bool:
        return self.route.policy.name == "public" or not self.route.policy.needs_token


@pytest.fixture(scope="module")
async def routes(stack: Stack) -> list[ServiceRoute]:
    """Every command every service consumes, as `shared.service.serve` assembles them."""
    settings = Settings.from_env(stack.env)
    found: list[ServiceRoute] = []
    for service, wire in WIRES.items():
        pool = await create_pool(settings.database_url, service, min_size=1, max_size=2)
        try:
            wiring = await wire(settings, pool)
        finally:
            await pool.close()
        table = check_routes([*wiring.commands, audit_route(service)])
        found.extend(ServiceRoute(service, route) for route in table.values())
    names = [r.name for r in found]
    assert len(names) == len(set(names)), f"a command is consumed by two services: {sorted(names)}"
    return found


def guarded(routes: list[ServiceRoute]) -> list[ServiceRoute]:
    return [r for r in routes if not r.public]


# -- sample payloads: one valid payload per guarded command --------------------------------------


@dataclass
class SampleContext:
    """What a sample may use: `victim` is the ordinary user whose resource the command acts on."""

    victim: User
    http: aiohttp.ClientSession
    db: asyncpg.Pool
    wait_until: WaitUntil


async def wait_for_profile(ctx: SampleContext, user: User) -> None:
    async def exists() -> bool:
        return await ctx.db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", user.id)

    await ctx.wait_until(exists, timeout=5.0)


async def post_of_victim(ctx: SampleContext) -> dict[str, Any]:
    async with ctx.http.post("/posts", json={"title": "Mine", "body": "Hands off"}, headers=ctx.victim.auth) as response:
        assert response.status == 201, await response.text()
        return {"post_id": (await response.json())["id"]}


async def ban_of_victim(ctx: SampleContext) -> dict[str, Any]:
    await wait_for_profile(ctx, ctx.victim)
    return {"user_id": ctx.victim.id, "reason": "injected"}


async def no_fields(_ctx: SampleContext) -> dict[str, Any]:
    return {}


async def a_page_of_audit(_ctx: SampleContext) -> dict[str, Any]:
    return {"limit": 5}


async def a_new_post(_ctx: SampleContext) -> dict[str, Any]:
    return {"title": "Injected", "body": "This post must not exist"}


SAMPLES: dict[str, Callable[[SampleContext], Awaitable[dict[str, Any]]]] = {
    "logout": no_fields,
    "get-me": no_fields,
    "create-post": a_new_post,
    "delete-post": post_of_victim,
    "ban-user": ban_of_victim,
    **{audit_command_name(service): a_page_of_audit for service in WIRES},
}


def sample_for(route: ServiceRoute) -> Callable[[SampleContext], Awaitable[dict[str, Any]]]:
    sample = SAMPLES.get(route.name)
    assert sample is not None, (
        f"{route.name!r} ({route.service}_service, policy {route.route.policy.name}) has no sample payload: "
        f"add a SAMPLES entry in {__name__} that builds a valid payload for it, so it is injected with every bad credential"
    )
    return sample


# -- credentials ---------------------------------------------------------------------------------

#: forge.bad_tokens() names, then the ones this module adds.
BAD_TOKENS = (
    "no token", "garbage token", "alg none", "HS256 with the public key", "foreign key with the real kid",
    "expired", "wrong aud", "wrong iss",
)
EXPIRED_PAST_LEEWAY = "expired 10 s ago"
LOGGED_OUT = "logged out"
BANNED = "banned"
ANOTHER_USER = "another user"  # not the owner for owner-or-admin, not an admin for admin
CASES = (*BAD_TOKENS, EXPIRED_PAST_LEEWAY, LOGGED_OUT, BANNED, ANOTHER_USER)
STATUS = {**dict.fromkeys((*BAD_TOKENS, EXPIRED_PAST_LEEWAY, LOGGED_OUT), 401), BANNED: 403, ANOTHER_USER: 403}
KNOWN_POLICIES = ("user", "owner_or_admin", "admin")


def applies(case: str, route: ServiceRoute) -> bool:
    return case != ANOTHER_USER or route.route.policy.name in ("owner_or_admin", "admin")


def flawed_tokens(forge: TokenForge, holder: User, role: str) -> dict[str, str | None]:
    """forge.bad_tokens() for the holder's real sub and sid, claiming the holder's real role."""
    now = int(time.time())
    tokens = forge.bad_tokens(holder.id, holder.session_id, role=role)
    assert tuple(tokens) == BAD_TOKENS, f"the forge's list changed to {tuple(tokens)}; update BAD_TOKENS"
    tokens[EXPIRED_PAST_LEEWAY] = forge.sign(forge.claims(holder.id, holder.session_id, role=role, iat=now - 610, exp=now - 10))
    return tokens


@dataclass
class Injector:
    http: aiohttp.ClientSession
    db: asyncpg.Pool
    broker: BrokerProbe
    forge: TokenForge
    stack: Stack
    admin: User
    wait_until: WaitUntil

    async def holder(self, route: ServiceRoute, case: str, victim: User) -> tuple[User, str]:
        """Who presents the credential, and the role their token claims."""
        policy = route.route.policy.name
        assert policy in KNOWN_POLICIES, (
            f"{route.name!r} has policy {policy!r}, which this test does not know: decide which credentials it must refuse"
        )
        if policy == "user":
            return victim, "user"
        if policy == "owner_or_admin":
            return (await register(self.http, "other") if case == ANOTHER_USER else victim), "user"
        if case == ANOTHER_USER:
            return await register(self.http, "plain"), "user"
        if case == BANNED:  # a banned *admin*: the 403 must come from the ban, not the role
            return await make_admin(self.http, self.stack), "admin"
        return self.admin, "admin"

    async def credential(self, case: str, holder: User, role: str, schema: str) -> str | None:
        if case == LOGGED_OUT:
            return await self.logged_out_token(holder, schema)
        if case == BANNED:
            await self.ban(holder, schema)
            return holder.token
        if case == ANOTHER_USER:
            return holder.token
        return flawed_tokens(self.forge, holder, role)[case]

    async def logged_out_token(self, holder: User, schema: str) -> str:
        """A real token of a second session of `holder`, logged out through the gateway."""
        token = await login(self.http, holder.email, holder.password)
        async with self.http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 204, await response.text()
        sid = token_claims(token)["sid"]

        async def revoked_there() -> bool:
            return await self.db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.revoked_sessions WHERE session_id = $1)", sid)

        await self.wait_until(revoked_there, timeout=5.0)
        return token

    async def ban(self, user: User, schema: str) -> None:
        async def profile() -> bool:
            return await self.db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", user.id)

        await self.wait_until(profile, timeout=5.0)
        async with self.http.post(f"/users/{user.id}/ban", json={"reason": "test"}, headers=self.admin.auth) as response:
            assert response.status == 200, await response.text()

        async def banned_there() -> bool:
            return await self.db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.banned_accounts WHERE user_id = $1)", user.id)

        await self.wait_until(banned_there, timeout=5.0)

    def context(self, victim: User) -> SampleContext:
        return SampleContext(victim, self.http, self.db, self.wait_until)

    async def expect_refusal(self, route: ServiceRoute, case: str) -> None:
        """Inject `route` with the credential `case` names; refused, audited, nothing changed."""
        sample = sample_for(route)
        victim = await register(self.http, "victim")
        payload = await sample(self.context(victim))
        holder, role = await self.holder(route, case, victim)
        token = await self.credential(case, holder, role, route.service)
        expected = STATUS[case]
        before = await settled_fingerprint(self.db)
        message_id = str(uuid4())

        reply = await self.broker.command(route.name, payload, token=token, message_id=message_id)

        assert reply is not None and reply.get("ok") is False, f"expected a {expected} refusal, the command ran: {reply}"
        assert reply["error"]["status"] == expected, f"expected status {expected}, got {reply['error']}"
        await asyncio.sleep(0.3)
        after = await fingerprint(self.db, like=before)
        assert after == before, f"refused, but it changed {changed_tables(before, after)}"
        denied = await self.db.fetchval(
            f"SELECT count(*) FROM {route.service}.audit_log WHERE decision = 'denied' AND command = $1 AND message_id = $2",
            route.name, message_id,
        )
        assert denied == 1, f"expected one 'denied' row in {route.service}.audit_log for message {message_id}, found {denied}"


@pytest.fixture(scope="module")
async def admin(http: aiohttp.ClientSession, stack: Stack) -> User:
    return await make_admin(http, stack)


@pytest.fixture
def injector(
    http: aiohttp.ClientSession, db: asyncpg.Pool, broker: BrokerProbe, forge: TokenForge, stack: Stack,
    admin: User, wait_until: WaitUntil,
) -> Injector:
    return Injector(http, db, broker, forge, stack, admin, wait_until)


# -- the tests -----------------------------------------------------------------------------------


async def test_wiring_lists_the_contract_commands(routes: list[ServiceRoute]) -> None:
    """Sanity of the enumeration itself: it sees at least every command of the contract."""
    names = {r.name for r in routes}
    contract = {"register", "login", "logout", "get-me", "create-post", "get-post", "list-posts", "delete-post", "get-user", "ban-user"}
    assert contract <= names, f"the wiring is missing {sorted(contract - names)}"
    assert {audit_command_name(s) for s in WIRES} <= names


async def test_public_commands_are_the_contracts(routes: list[ServiceRoute]) -> None:
    unexpected = sorted(f"{r.name} ({r.service}_service)" for r in routes if r.public and r.name not in CONTRACT_PUBLIC)
    assert not unexpected, (
        f"declared PUBLIC but not public in the contract: {unexpected}. A public command reads no token; "
        "if that is really intended, change the contract and CONTRACT_PUBLIC"
    )


async def test_every_guarded_command_has_a_sample(routes: list[ServiceRoute]) -> None:
    missing = sorted(r.name for r in guarded(routes) if r.name not in SAMPLES)
    assert not missing, f"no sample payload for {missing}: add a SAMPLES entry for each in {__name__}"


async def test_every_sample_runs_with_a_valid_credential(routes: list[ServiceRoute], injector: Injector) -> None:
    """Positive control: the owner (or an admin, for admin commands) runs each sample."""
    failures = []
    for route in guarded(routes):
        try:
            victim = await register(injector.http, "victim")
            payload = await sample_for(route)(injector.context(victim))
            caller = injector.admin if route.route.policy.name == "admin" else victim
            reply = await injector.broker.command(route.name, payload, token=caller.token)
            assert reply is not None and reply.get("ok") is True, f"the sample did not run: {reply}"
        except Exception as exc:  # noqa: BLE001 - report every command, then fail
            failures.append(f"{route.name} with a valid credential: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", CASES)
async def test_every_guarded_command_refuses(case: str, routes: list[ServiceRoute], injector: Injector) -> None:
    failures = []
    checked = []
    for route in guarded(routes):
        if not applies(case, route):
            continue
        checked.append(route.name)
        try:
            await injector.expect_refusal(route, case)
        except Exception as exc:  # noqa: BLE001 - report every command, then fail
            failures.append(f"{route.name} ({route.service}_service) with {case!r}: {type(exc).__name__}: {exc}")
    assert checked, f"no guarded command takes the credential {case!r}"
    assert not failures, "\n".join(failures)
