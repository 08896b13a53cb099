"""Every service re-authorizes every command, even one injected straight into RabbitMQ.

These tests skip the gateway and publish on the `commands` exchange the way an attacker with
broker access would. For each command that needs a token (`logout`, `get-me`, `create-post`,
`delete-post`, `ban-user`) they send it with every kind of bad credential (no token, garbage,
alg none, HS256 keyed with the public key, a foreign key under the real kid, expired, expired
beyond the 5 s leeway, wrong aud, wrong iss), with a logged-out session, as a banned user and,
where the command touches someone's resource, as the wrong user. Each must get the exact
status of the contract in its error reply (401, or 403 for banned / not owner / not admin) and
leave the database, the outbox and the event stream as they were. A valid token on the same path
succeeds, so the refusals are not a broken path.

They also prove that a refusal without a reply_to is still a refusal, that identity comes only
from the token (never a payload field or a header), that a foreign-key "admin" token grants
nothing, and that a message_id executes once per caller and never hands one caller's reply to
another or to a forged token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.accounts import User, login, token_claims
from tests.support.broker import BrokerProbe, EventTap, WaitUntil
from tests.support.forge import BAD_TOKENS, TokenForge
from tests.support.metrics import sample_of
from tests.support.stack import Stack

#: Signed by the real key, expired 10 s ago: past the 5 s clock-skew leeway.
EXPIRED_PAST_LEEWAY = "expired 10 s ago"
TOKEN_CASES = (*BAD_TOKENS, EXPIRED_PAST_LEEWAY)
SESSION_CASES = ("logged out", "banned")
ANOTHER_USER = "another user"
NOT_AN_ADMIN = "not an admin"

STATUS = {
    **dict.fromkeys(TOKEN_CASES, 401),
    "logged out": 401,
    "banned": 403,
    ANOTHER_USER: 403,
    NOT_AN_ADMIN: 403,
}

#: Headers an attacker might hope a service reads as the caller's identity or role.
IDENTITY_HEADERS = ("x-user-id", "x-user", "x-role", "role", "x-admin", "user_id", "sub")

# -- fixtures and helpers -----------------------------------------------------------------------


#: The events this module checks were (or were not) announced.
TAPPED_EVENTS = ("user.banned", "session.revoked", "post.created", "post.deleted")


@pytest.fixture(scope="module")
async def tap(broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil) -> AsyncIterator[EventTap]:
    async with broker.tap(TAPPED_EVENTS, wait_until, db) as opened:
        yield opened


def flawed_tokens(forge: TokenForge, holder: User, *, role: str = "user") -> dict[str, str | None]:
    """Every bad token for `holder`'s real sub and sid: only the flaw differs from a good one."""
    now = int(time.time())
    tokens = forge.bad_tokens(holder.id, holder.session_id, role=role)
    tokens[EXPIRED_PAST_LEEWAY] = forge.sign(forge.claims(holder.id, holder.session_id, role=role, iat=now - 610, exp=now - 10))
    return tokens


class Credentials:
    """Builds the token a case names, for a holder, and waits until `schema`'s service knows."""

    def __init__(self, http: aiohttp.ClientSession, db: asyncpg.Pool, forge: TokenForge, admin: User, wait_until: WaitUntil) -> None:
        self._http, self._db, self._forge, self._admin, self._wait_until = http, db, forge, admin, wait_until

    async def token(self, case: str, holder: User, schema: str, *, role: str = "user") -> str | None:
        if case in TOKEN_CASES:
            return flawed_tokens(self._forge, holder, role=role)[case]
        if case == "logged out":
            return await self.logged_out_token(holder, schema)
        if case == "banned":
            await self.ban(holder, schema)
            return holder.token
        if case in (ANOTHER_USER, NOT_AN_ADMIN):
            return holder.token
        raise AssertionError(f"unknown case {case!r}")

    async def logged_out_token(self, holder: User, schema: str) -> str:
        """A real token of a second session of `holder`, logged out through the gateway."""
        token = await login(self._http, holder.email, holder.password)
        async with self._http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 204, await response.text()
        sid = token_claims(token)["sid"]

        async def revoked_here() -> bool:
            return await self._db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.revoked_sessions WHERE session_id = $1)", sid)

        await self._wait_until(revoked_here, timeout=5.0)
        return token

    async def ban(self, user: User, schema: str) -> None:
        await wait_for_profile(self._db, self._wait_until, user)
        async with self._http.post(f"/users/{user.id}/ban", json={"reason": "test"}, headers=self._admin.auth) as response:
            assert response.status == 200, await response.text()

        async def banned_here() -> bool:
            return await self._db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.banned_accounts WHERE user_id = $1)", user.id)

        await self._wait_until(banned_here, timeout=5.0)


@pytest.fixture
def creds(http: aiohttp.ClientSession, db: asyncpg.Pool, forge: TokenForge, admin: User, wait_until: WaitUntil) -> Credentials:
    return Credentials(http, db, forge, admin, wait_until)


async def wait_for_profile(db: asyncpg.Pool, wait_until: WaitUntil, user: User) -> None:
    async def exists() -> bool:
        return await db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", user.id)

    await wait_until(exists, timeout=5.0)


def refused(reply: dict[str, Any] | None, status: int) -> None:
    assert reply is not None
    assert reply["ok"] is False, f"expected a {status} refusal, the command ran: {reply}"
    assert reply["error"]["status"] == status, reply


def succeeded(reply: dict[str, Any] | None) -> Any:
    assert reply is not None
    assert reply["ok"] is True, reply
    return reply.get("result")


async def make_post(http: aiohttp.ClientSession, author: User) -> str:
    async with http.post("/posts", json={"title": "Mine", "body": "Hands off"}, headers=author.auth) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def post_exists(db: asyncpg.Pool, post_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.posts WHERE id = $1)", post_id)


async def posts_traces(db: asyncpg.Pool, user_id: str) -> dict[str, int]:
    """Everything create-post leaves in posts_service's schema for a caller."""
    return {
        "posts": await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user_id),
        "outbox": await db.fetchval("SELECT count(*) FROM posts.outbox WHERE body->>'author_id' = $1", user_id),
        "processed_commands": await db.fetchval("SELECT count(*) FROM posts.processed_commands WHERE subject = $1", user_id),
    }


async def ban_state(db: asyncpg.Pool, user_id: str) -> dict[str, Any]:
    return {
        "profile_banned": await db.fetchval("SELECT banned FROM users.profiles WHERE id = $1", user_id),
        "banned_accounts": await db.fetchval("SELECT count(*) FROM users.banned_accounts WHERE user_id = $1", user_id),
    }


async def revoked_sessions_of(db: asyncpg.Pool, user_id: str) -> set[str]:
    rows = await db.fetch("SELECT session_id FROM auth.revoked_sessions WHERE user_id = $1", user_id)
    return {str(r["session_id"]) for r in rows}


async def commands_total(http: aiohttp.ClientSession, stack: Stack, service: str, command: str, outcome: str) -> float:
    async with http.get(stack.http_url(service) + "/metrics") as response:
        assert response.status == 200
        return sample_of(await response.text(), "commands_total", command=command, outcome=outcome)


# -- logout (auth_service) ----------------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOKEN_CASES, *SESSION_CASES])
async def test_logout_refused(case: str, broker: BrokerProbe, db: asyncpg.Pool, creds: Credentials, tap: EventTap, new_user) -> None:
    victim: User = await new_user("victim")
    token = await creds.token(case, victim, "auth")
    before = await revoked_sessions_of(db, victim.id)

    refused(await broker.command("logout", {}, token=token), STATUS[case])

    assert await revoked_sessions_of(db, victim.id) == before
    if case != "banned":  # a ban itself ends every session; the refusal must still add nothing
        assert victim.session_id not in before
        succeeded(await broker.command("get-me", {}, token=victim.token))
        assert await tap.settled("auth", "session.revoked", session_id=victim.session_id) == []


async def test_logout_with_valid_token(broker: BrokerProbe, db: asyncpg.Pool, tap: EventTap, new_user) -> None:
    victim: User = await new_user("victim")
    succeeded(await broker.command("logout", {}, token=victim.token))
    assert victim.session_id in await revoked_sessions_of(db, victim.id)
    assert len(await tap.settled("auth", "session.revoked", session_id=victim.session_id)) == 1
    refused(await broker.command("get-me", {}, token=victim.token), 401)


# -- get-me (auth_service) ----------------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOKEN_CASES, *SESSION_CASES])
async def test_get_me_refused(case: str, broker: BrokerProbe, creds: Credentials, new_user) -> None:
    victim: User = await new_user("victim")
    token = await creds.token(case, victim, "auth")
    refused(await broker.command("get-me", {}, token=token), STATUS[case])


async def test_get_me_with_valid_token(broker: BrokerProbe, new_user) -> None:
    victim: User = await new_user("victim")
    me = succeeded(await broker.command("get-me", {}, token=victim.token))
    assert (me["id"], me["email"]) == (victim.id, victim.email)


# -- create-post (posts_service) ----------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOKEN_CASES, *SESSION_CASES])
async def test_create_post_refused(case: str, broker: BrokerProbe, db: asyncpg.Pool, creds: Credentials, tap: EventTap, new_user) -> None:
    caller: User = await new_user("caller")
    token = await creds.token(case, caller, "posts")

    refused(await broker.command("create-post", {"title": "Injected", "body": "Nope"}, token=token), STATUS[case])

    assert await posts_traces(db, caller.id) == {"posts": 0, "outbox": 0, "processed_commands": 0}
    assert await tap.settled("posts", "post.created", author_id=caller.id) == []


async def test_create_post_with_valid_token(broker: BrokerProbe, db: asyncpg.Pool, tap: EventTap, new_user) -> None:
    caller: User = await new_user("caller")
    post = succeeded(await broker.command("create-post", {"title": "Injected", "body": "Fine"}, token=caller.token))
    assert post["author_id"] == caller.id
    assert await post_exists(db, post["id"])
    traces = await posts_traces(db, caller.id)
    assert (traces["posts"], traces["processed_commands"]) == (1, 1)
    assert len(await tap.settled("posts", "post.created", post_id=post["id"], author_id=caller.id)) == 1


# -- delete-post (posts_service) ----------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOKEN_CASES, *SESSION_CASES, ANOTHER_USER])
async def test_delete_post_refused(
    case: str, http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, creds: Credentials, tap: EventTap, new_user
) -> None:
    owner: User = await new_user("owner")
    post_id = await make_post(http, owner)
    holder = await new_user("other") if case == ANOTHER_USER else owner
    token = await creds.token(case, holder, "posts")

    refused(await broker.command("delete-post", {"post_id": post_id}, token=token), STATUS[case])

    assert await post_exists(db, post_id)
    assert await tap.settled("posts", "post.deleted", post_id=post_id) == []


@pytest.mark.parametrize("who", ["owner", "admin"])
async def test_delete_post_with_valid_token(
    who: str, http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, tap: EventTap, admin: User, new_user
) -> None:
    owner: User = await new_user("owner")
    post_id = await make_post(http, owner)
    caller = owner if who == "owner" else admin
    succeeded(await broker.command("delete-post", {"post_id": post_id}, token=caller.token))
    assert not await post_exists(db, post_id)
    assert len(await tap.settled("posts", "post.deleted", post_id=post_id, by=caller.id)) == 1


@pytest.mark.parametrize("case", [*TOKEN_CASES, ANOTHER_USER])
async def test_delete_post_without_reply_to(
    case: str,
    http: aiohttp.ClientSession,
    plain_http: aiohttp.ClientSession,
    stack: Stack,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    creds: Credentials,
    wait_until: WaitUntil,
    new_user,
) -> None:
    """Nobody is listening for the refusal, and the command still does not run."""
    owner: User = await new_user("owner")
    post_id = await make_post(http, owner)
    holder = await new_user("other") if case == ANOTHER_USER else owner
    token = await creds.token(case, holder, "posts")
    outcome = str(STATUS[case])
    before = await commands_total(plain_http, stack, "posts", "delete-post", outcome)

    assert await broker.command("delete-post", {"post_id": post_id}, token=token, reply=False) is None

    async def processed() -> bool:
        return await commands_total(plain_http, stack, "posts", "delete-post", outcome) > before

    await wait_until(processed, timeout=5.0)
    assert await post_exists(db, post_id)


# -- ban-user (users_service) -------------------------------------------------------------------


@pytest.mark.parametrize("case", [*TOKEN_CASES, *SESSION_CASES, NOT_AN_ADMIN])
async def test_ban_user_refused(
    case: str,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    creds: Credentials,
    tap: EventTap,
    wait_until: WaitUntil,
    admin: User,
    new_user,
    new_admin,
) -> None:
    target: User = await new_user("target")
    await wait_for_profile(db, wait_until, target)
    if case == "banned":
        holder, role = await new_admin(), "admin"
    elif case == NOT_AN_ADMIN:
        holder, role = await new_user("plain"), "user"
    else:
        holder, role = admin, "admin"
    token = await creds.token(case, holder, "users", role=role)

    refused(await broker.command("ban-user", {"user_id": target.id, "reason": "injected"}, token=token), STATUS[case])

    assert await ban_state(db, target.id) == {"profile_banned": False, "banned_accounts": 0}
    assert await tap.settled("users", "user.banned", user_id=target.id) == []


async def test_ban_user_with_valid_token(
    broker: BrokerProbe, db: asyncpg.Pool, tap: EventTap, wait_until: WaitUntil, admin: User, new_user
) -> None:
    target: User = await new_user("target")
    await wait_for_profile(db, wait_until, target)
    profile = succeeded(await broker.command("ban-user", {"user_id": target.id, "reason": "spam"}, token=admin.token))
    assert (profile["id"], profile["banned"]) == (target.id, True)
    assert await ban_state(db, target.id) == {"profile_banned": True, "banned_accounts": 1}
    assert len(await tap.settled("users", "user.banned", user_id=target.id, by=admin.id)) == 1


@pytest.mark.parametrize("kid", ["real kid", "own kid"])
async def test_ban_user_forged_admin_token(
    kid: str, broker: BrokerProbe, db: asyncpg.Pool, forge: TokenForge, tap: EventTap, wait_until: WaitUntil, new_user
) -> None:
    """A well-formed token claiming role=admin, signed by a key auth_service never had."""
    plain: User = await new_user("plain")
    target: User = await new_user("target")
    await wait_for_profile(db, wait_until, target)
    claims = forge.claims(plain.id, plain.session_id, role="admin")
    if kid == "real kid":
        token = forge.foreign_key(claims)
    else:
        token = forge.sign(claims, key=Ed25519PrivateKey.generate(), headers={"kid": "attacker-key"})

    refused(await broker.command("ban-user", {"user_id": target.id}, token=token), 401)

    assert await ban_state(db, target.id) == {"profile_banned": False, "banned_accounts": 0}
    assert await tap.settled("users", "user.banned", user_id=target.id) == []


# -- identity comes from the token only ---------------------------------------------------------


async def test_author_id_in_payload(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    caller: User = await new_user("caller")
    other: User = await new_user("other")
    reply = await broker.command("create-post", {"title": "Spoof", "body": "x", "author_id": other.id}, token=caller.token)
    refused(reply, 422)
    assert (await posts_traces(db, caller.id))["posts"] == 0
    assert (await posts_traces(db, other.id))["posts"] == 0


async def test_identity_headers_create_post(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    caller: User = await new_user("caller")
    other: User = await new_user("other")
    headers = {name: ("admin" if "role" in name or "admin" in name else other.id) for name in IDENTITY_HEADERS}

    post = succeeded(await broker.command("create-post", {"title": "Mine", "body": "x"}, token=caller.token, headers=headers))

    assert post["author_id"] == caller.id
    assert await db.fetchval("SELECT author_id::text FROM posts.posts WHERE id = $1", post["id"]) == caller.id
    assert (await posts_traces(db, other.id))["posts"] == 0


async def test_identity_headers_ban_user(broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil, admin: User, new_user) -> None:
    plain: User = await new_user("plain")
    target: User = await new_user("target")
    await wait_for_profile(db, wait_until, target)
    headers = {name: ("admin" if "role" in name or "admin" in name else admin.id) for name in IDENTITY_HEADERS}

    refused(await broker.command("ban-user", {"user_id": target.id}, token=plain.token, headers=headers), 403)
    assert await ban_state(db, target.id) == {"profile_banned": False, "banned_accounts": 0}


async def test_identity_headers_delete_post(http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    owner: User = await new_user("owner")
    other: User = await new_user("other")
    post_id = await make_post(http, owner)
    headers = {name: ("admin" if "role" in name or "admin" in name else owner.id) for name in IDENTITY_HEADERS}

    refused(await broker.command("delete-post", {"post_id": post_id}, token=other.token, headers=headers), 403)
    assert await post_exists(db, post_id)


# -- replay: a message_id executes once per caller ----------------------------------------------


async def test_replay_same_caller(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    caller: User = await new_user("caller")
    message_id, title = str(uuid4()), f"once-{uuid4().hex}"
    payload = {"title": title, "body": "x"}

    first = succeeded(await broker.command("create-post", payload, token=caller.token, message_id=message_id))
    second = succeeded(await broker.command("create-post", payload, token=caller.token, message_id=message_id))

    assert second["id"] == first["id"]
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 1


async def test_replay_with_another_payload_is_422(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    """The same message_id from the same caller with another payload is refused, not answered
    with the first reply, and runs nothing; the first payload still replays."""
    caller: User = await new_user("caller")
    message_id, title = str(uuid4()), f"first-{uuid4().hex}"
    first = succeeded(await broker.command("create-post", {"title": title, "body": "x"}, token=caller.token, message_id=message_id))

    other = f"other-{uuid4().hex}"
    reply = await broker.command("create-post", {"title": other, "body": "x"}, token=caller.token, message_id=message_id)
    refused(reply, 422)
    assert reply is not None and "different payload" in reply["error"]["detail"]
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", other) == 0
    again = succeeded(await broker.command("create-post", {"body": "x", "title": title}, token=caller.token, message_id=message_id))
    assert again["id"] == first["id"]


async def test_replay_other_caller(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    alice: User = await new_user("alice")
    bob: User = await new_user("bob")
    message_id, title = str(uuid4()), f"twice-{uuid4().hex}"
    payload = {"title": title, "body": "x"}

    first = succeeded(await broker.command("create-post", payload, token=alice.token, message_id=message_id))
    second = succeeded(await broker.command("create-post", payload, token=bob.token, message_id=message_id))

    assert second["id"] != first["id"]
    assert (first["author_id"], second["author_id"]) == (alice.id, bob.id)
    rows = await db.fetch("SELECT author_id::text AS author FROM posts.posts WHERE title = $1", title)
    assert sorted(r["author"] for r in rows) == sorted([alice.id, bob.id])


async def test_replay_forged_token(broker: BrokerProbe, db: asyncpg.Pool, forge: TokenForge, new_user) -> None:
    """Knowing someone's message_id and sub does not fetch their stored reply."""
    caller: User = await new_user("caller")
    message_id, title = str(uuid4()), f"mine-{uuid4().hex}"
    payload = {"title": title, "body": "x"}
    succeeded(await broker.command("create-post", payload, token=caller.token, message_id=message_id))

    forged = forge.foreign_key(forge.claims(caller.id, caller.session_id))
    refused(await broker.command("create-post", payload, token=forged, message_id=message_id), 401)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 1
