"""Events only take privilege away: forged and replayed events on `events` grant nobody anything.

Anyone with broker access can publish on the `events` exchange, but consumers accept an event only
from its owning service's broker user (tests/test_publisher_identity.py shows an outsider's are
parked). These tests go further and publish as the owner itself, a compromised service: the
contract says the only thing that grants privilege is a token signed by auth_service, that
consumers ignore an `event_id` they have seen, and that no event can make anyone an admin, unban
anyone or un-revoke a session. So:

- a `user.registered` claiming `"role": "admin"` (for an existing user, replayed with the real
  event_id or sent with a new one, or for a made-up user_id) makes nobody an admin and does not
  overwrite an existing profile's display name;
- a real `user.banned` replayed with its event_id but altered fields (`"banned": false`,
  `"unban": true`, another user_id) unbans nobody and bans nobody new;
- a real `session.revoked` replayed with `"revoked": false` leaves the session revoked;
- events under routing keys the contract does not define (`user.unbanned`, `user.promoted`,
  `session.restored`) change no row anywhere, even pushed straight into a service's event queue;
- a malformed body under a known routing key is dead-lettered in `<service>.events.dead` and
  changes nothing.

Every case ends by showing the services still serve. Whether a consumer has dealt with a
published event is read from its `events_consumed_total` metric, so the checks never race it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest

from shared.declarations import SERVICE_NAMES
from shared.events import EVENTS
from shared.runner import UNKNOWN
from tests.support.accounts import User, login, register, token_claims
from tests.support.broker import BrokerProbe, EventTap, WaitUntil
from tests.support.fingerprint import changed_tables, fingerprint, settled_fingerprint
from tests.support.metrics import sample_of
from tests.support.stack import Stack

SERVICES = SERVICE_NAMES
#: Who consumes each event (the services' bindings on `events`), from the declarations.
CONSUMERS = {name: tuple(s.name for s in event.consumers) for name, event in EVENTS.items() if event.consumers}
POST = {"title": "Still allowed?", "body": "Checking what this token may do"}


def now() -> str:
    return datetime.now(UTC).isoformat()


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def tap(broker: BrokerProbe, wait_until: WaitUntil) -> AsyncIterator[EventTap]:
    async with broker.tap(CONSUMERS, wait_until) as opened:
        yield opened


class Consumption:
    """Counts of `events_consumed_total` per service, to wait until a published event was handled."""

    def __init__(self, http: aiohttp.ClientSession, stack: Stack, wait_until: WaitUntil) -> None:
        self._http, self._stack, self._wait_until = http, stack, wait_until

    async def count(self, service: str, routing_key: str, outcome: str) -> float:
        async with self._http.get(self._stack.http_url(service) + "/metrics") as response:
            assert response.status == 200
            return sample_of(await response.text(), "events_consumed_total", routing_key=routing_key, outcome=outcome)

    async def counts(self, routing_key: str, outcome: str = "ok") -> dict[str, float]:
        return {s: await self.count(s, routing_key, outcome) for s in CONSUMERS.get(routing_key, ())}

    async def wait_past(self, before: dict[str, float], routing_key: str, outcome: str = "ok", by: int = 1) -> None:
        async def done() -> bool:
            return all([await self.count(s, routing_key, outcome) >= n + by for s, n in before.items()])

        await self._wait_until(done, timeout=5.0)


@pytest.fixture
def consumption(plain_http: aiohttp.ClientSession, stack: Stack, wait_until: WaitUntil) -> Consumption:
    return Consumption(plain_http, stack, wait_until)


async def publish_and_wait(broker: BrokerProbe, consumption: Consumption, routing_key: str, body: dict[str, Any]) -> None:
    """Publish an event on `events` as its owning service, and wait until every consumer of that
    key has handled it."""
    before = await consumption.counts(routing_key)
    await broker.event(routing_key, body, as_process=EVENTS[routing_key].owner.name)
    await consumption.wait_past(before, routing_key)


def status(reply: dict[str, Any] | None) -> int | str:
    assert reply is not None
    return "ok" if reply["ok"] is True else reply["error"]["status"]


async def what_each_service_answers(broker: BrokerProbe, token: str, target_id: str) -> dict[str, int | str]:
    """auth: get-me; posts: create-post; users: ban-user of `target_id`."""
    return {
        "auth": status(await broker.command("get-me", {}, token=token)),
        "posts": status(await broker.command("create-post", POST, token=token)),
        "users": status(await broker.command("ban-user", {"user_id": target_id}, token=token)),
    }


async def wait_for_profile(db: asyncpg.Pool, wait_until: WaitUntil, user_id: str) -> None:
    async def exists() -> bool:
        return await db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", user_id)

    await wait_until(exists, timeout=5.0)


async def seen_everywhere(db: asyncpg.Pool, wait_until: WaitUntil, event_id: str, services: tuple[str, ...]) -> None:
    """Every consumer has recorded `event_id`, so a replay of it is a replay to each of them."""

    async def seen() -> bool:
        return all([await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.seen_events WHERE event_id = $1)", event_id) for s in services])

    await wait_until(seen, timeout=5.0)


async def ban_rows(db: asyncpg.Pool, user_id: str) -> dict[str, bool]:
    rows = {s: await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.banned_accounts WHERE user_id = $1)", user_id) for s in SERVICES}
    rows["users.profiles.banned"] = await db.fetchval("SELECT banned FROM users.profiles WHERE id = $1", user_id)
    return rows


async def ban_through_gateway(http: aiohttp.ClientSession, admin: User, user: User) -> None:
    async with http.post(f"/users/{user.id}/ban", json={"reason": "spam"}, headers=admin.auth) as response:
        assert response.status == 200, await response.text()


async def find_dead_letter(broker: BrokerProbe, queue: str, marker: str) -> aio_pika.abc.AbstractIncomingMessage:
    """Drain `<queue>.dead` until a message whose body holds `marker` turns up."""
    try:
        return await broker.parked(queue, lambda message: marker.encode() in message.body)
    except AssertionError:
        elsewhere = [
            f"{other}.dead"
            for other in (f"{s}.{kind}" for s in SERVICES for kind in ("events", "commands"))
            if other != queue and any(marker.encode() in m.body for m in await broker.dead_letters(other))
        ]
        raise AssertionError(
            f"nothing holding {marker} was dead-lettered in {queue}.dead; found in {elsewhere or 'no dead-letter queue'}"
        ) from None


async def still_serving(http: aiohttp.ClientSession, broker: BrokerProbe) -> None:
    """Positive control: a fresh user registers and signs in (auth), posts (posts), and shows up
    in users_service within the contract's second."""
    user = await register(http, "control")
    me = await broker.command("get-me", {}, token=user.token)
    assert me is not None and me["ok"] is True, me
    post = await broker.command("create-post", POST, token=user.token)
    assert post is not None and post["ok"] is True, post
    for _ in range(20):
        profile = await broker.command("get-user", {"user_id": user.id})
        if profile is not None and profile["ok"]:
            break
        await asyncio.sleep(0.1)
    assert profile is not None and profile["ok"] is True, profile


# -- user.registered claiming a role ------------------------------------------------------------


@pytest.mark.parametrize("event_id", ["replayed", "new"])
async def test_registered_claiming_admin_for_an_existing_user(
    event_id: str,
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    tap: EventTap,
    consumption: Consumption,
    wait_until: WaitUntil,
) -> None:
    user = await register(http, "plain")
    target = await register(http, "target")
    real = await tap.captured("user.registered", user_id=user.id)
    await wait_for_profile(db, wait_until, user.id)
    await wait_for_profile(db, wait_until, target.id)
    await seen_everywhere(db, wait_until, real["event_id"], CONSUMERS["user.registered"])
    forged = {
        **real,
        "event_id": real["event_id"] if event_id == "replayed" else str(uuid4()),
        "occurred_at": now(),
        "display_name": "Forged Admin",
        "role": "admin",
        "is_admin": True,
    }

    await publish_and_wait(broker, consumption, "user.registered", forged)

    assert await db.fetchval("SELECT role FROM auth.accounts WHERE id = $1", user.id) == "user"
    ban = await broker.command("ban-user", {"user_id": target.id, "reason": "I am admin now?"}, token=user.token)
    assert status(ban) == 403, ban
    assert (await ban_rows(db, target.id))["users.profiles.banned"] is False
    for token in (user.token, await login(http, user.email, user.password)):
        async with http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["role"] == "user"
        assert token_claims(token)["role"] == "user"
    assert await db.fetchval("SELECT display_name FROM users.profiles WHERE id = $1", user.id) == user.display_name
    async with http.get(f"/users/{user.id}") as response:
        assert await response.json() == {"id": user.id, "display_name": user.display_name, "banned": False}


async def test_registered_claiming_admin_for_a_made_up_user(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, consumption: Consumption
) -> None:
    made_up = str(uuid4())
    admins_before = await db.fetchval("SELECT count(*) FROM auth.accounts WHERE role = 'admin'")
    forged = {"event_id": str(uuid4()), "occurred_at": now(), "user_id": made_up, "display_name": "Ghost Admin", "role": "admin"}

    await publish_and_wait(broker, consumption, "user.registered", forged)

    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE id = $1", made_up) == 0
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE role = 'admin'") == admins_before
    async with http.get(f"/users/{made_up}") as response:
        if response.status == 200:  # a profile is information, never privilege: no role, no ban power
            assert set(await response.json()) == {"id", "display_name", "banned"}
        else:
            assert response.status == 404, await response.text()
    await still_serving(http, broker)


# -- user.banned replayed with altered fields ---------------------------------------------------


@pytest.fixture
async def banned_victim(
    http: aiohttp.ClientSession, db: asyncpg.Pool, tap: EventTap, admin: User, wait_until: WaitUntil
) -> tuple[User, dict[str, Any]]:
    """A user banned by an admin, and the real `user.banned` event once every service saw it."""
    victim = await register(http, "victim")
    await wait_for_profile(db, wait_until, victim.id)
    await ban_through_gateway(http, admin, victim)
    real = await tap.captured("user.banned", user_id=victim.id)
    await seen_everywhere(db, wait_until, real["event_id"], CONSUMERS["user.banned"])
    return victim, real


async def assert_banned_everywhere(http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, victim: User) -> None:
    assert await ban_rows(db, victim.id) == {"auth": True, "users": True, "posts": True, "users.profiles.banned": True}
    fresh = await broker.command("login", {"email": victim.email, "password": victim.password})
    assert status(fresh) == 403, fresh
    async with http.get(f"/users/{victim.id}") as response:
        assert (await response.json())["banned"] is True


ALTERATIONS: dict[str, dict[str, Any]] = {
    "banned false": {"banned": False},
    "unban true": {"unban": True},
    "banned false, unban true, by and reason": {"banned": False, "unban": True, "by": str(uuid4()), "reason": "appeal granted"},
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
async def test_banned_replayed_with_altered_fields(
    alteration: str,
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    consumption: Consumption,
    banned_victim: tuple[User, dict[str, Any]],
) -> None:
    victim, real = banned_victim
    forged = {**real, **ALTERATIONS[alteration], "occurred_at": now()}

    await publish_and_wait(broker, consumption, "user.banned", forged)

    await assert_banned_everywhere(http, broker, db, victim)
    answers = await what_each_service_answers(broker, victim.token, str(uuid4()))
    assert answers == {"auth": 403, "posts": 403, "users": 403}, answers


async def test_banned_with_a_new_event_id_claiming_unban(
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    consumption: Consumption,
    banned_victim: tuple[User, dict[str, Any]],
) -> None:
    """Not a replay: consumers apply it, and applying a ban can only ban."""
    victim, real = banned_victim
    forged = {**real, "event_id": str(uuid4()), "occurred_at": now(), "banned": False, "unban": True}

    await publish_and_wait(broker, consumption, "user.banned", forged)

    await assert_banned_everywhere(http, broker, db, victim)


async def test_banned_replayed_for_another_user_bans_nobody(
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    consumption: Consumption,
    banned_victim: tuple[User, dict[str, Any]],
    wait_until: WaitUntil,
) -> None:
    victim, real = banned_victim
    bystander = await register(http, "bystander")
    await wait_for_profile(db, wait_until, bystander.id)
    forged = {**real, "user_id": bystander.id, "occurred_at": now()}

    await publish_and_wait(broker, consumption, "user.banned", forged)

    assert await ban_rows(db, bystander.id) == {"auth": False, "users": False, "posts": False, "users.profiles.banned": False}
    me = await broker.command("get-me", {}, token=bystander.token)
    assert status(me) == "ok", me
    post = await broker.command("create-post", POST, token=bystander.token)
    assert status(post) == "ok", post
    await assert_banned_everywhere(http, broker, db, victim)


# -- session.revoked replayed with altered fields -----------------------------------------------


@pytest.mark.parametrize("event_id", ["replayed", "new"])
async def test_revoked_replayed_with_revoked_false(
    event_id: str,
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    tap: EventTap,
    consumption: Consumption,
    wait_until: WaitUntil,
) -> None:
    user = await register(http, "leaver")
    async with http.post("/auth/logout", headers=user.auth) as response:
        assert response.status == 204, await response.text()
    real = await tap.captured("session.revoked", session_id=user.session_id)
    await seen_everywhere(db, wait_until, real["event_id"], CONSUMERS["session.revoked"])
    forged = {
        **real,
        "event_id": real["event_id"] if event_id == "replayed" else str(uuid4()),
        "occurred_at": now(),
        "revoked": False,
        "restored": True,
    }

    await publish_and_wait(broker, consumption, "session.revoked", forged)

    for schema in SERVICES:
        assert await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.revoked_sessions WHERE session_id = $1)", user.session_id), (
            f"{schema} forgot the revocation"
        )
    assert await db.fetchval("SELECT revoked_at IS NOT NULL FROM auth.sessions WHERE id = $1", user.session_id)
    answers = await what_each_service_answers(broker, user.token, str(uuid4()))
    assert answers == {"auth": 401, "posts": 401, "users": 401}, answers
    await still_serving(http, broker)


# -- routing keys the contract does not define --------------------------------------------------


@pytest.fixture
async def privileges_to_restore(http: aiohttp.ClientSession, db: asyncpg.Pool, admin: User, wait_until: WaitUntil) -> dict[str, User]:
    """A banned user, an ordinary user and a logged-out session: what a forged event would want to undo."""
    banned = await register(http, "banned")
    await wait_for_profile(db, wait_until, banned.id)
    await ban_through_gateway(http, admin, banned)
    plain = await register(http, "plain")
    await wait_for_profile(db, wait_until, plain.id)
    leaver = await register(http, "leaver")
    async with http.post("/auth/logout", headers=leaver.auth) as response:
        assert response.status == 204, await response.text()
    return {"banned": banned, "plain": plain, "leaver": leaver}


def unknown_events(people: dict[str, User]) -> dict[str, dict[str, Any]]:
    banned, plain, leaver = people["banned"], people["plain"], people["leaver"]
    return {
        "user.unbanned": {"user_id": banned.id, "by": plain.id, "reason": "forgiven"},
        "user.promoted": {"user_id": plain.id, "role": "admin"},
        "session.restored": {"session_id": leaver.session_id, "user_id": leaver.id, "revoked": False},
    }


@pytest.mark.parametrize("routing_key", ["user.unbanned", "user.promoted", "session.restored"])
@pytest.mark.parametrize("path", ["events exchange", "straight into each event queue"])
async def test_unknown_routing_key_changes_nothing(
    routing_key: str,
    path: str,
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    privileges_to_restore: dict[str, User],
    consumption: Consumption,
    wait_until: WaitUntil,
) -> None:
    people = privileges_to_restore
    body = {"event_id": str(uuid4()), "occurred_at": now(), **unknown_events(people)[routing_key]}
    before = await settled_fingerprint(db)

    if path == "events exchange":
        await broker.event(routing_key, body)  # no service binds these keys: nobody may act on it
        await asyncio.sleep(0.5)
    else:
        # The default exchange delivers to any queue by name, so the consumer itself must refuse
        # it; it sees the queue's name as the routing key, which no event declares, so its
        # metrics count it as `unknown` (labels take only declared values).
        refused = {s: await consumption.count(s, UNKNOWN, "malformed") for s in SERVICES}
        for service in SERVICES:
            await broker.to_queue(f"{service}.events", json.dumps(body).encode(), type=routing_key)
        for service in SERVICES:
            await consumption.wait_past({service: refused[service]}, UNKNOWN, "malformed")

    after = await fingerprint(db, like=before)
    assert after == before, f"{routing_key} changed {changed_tables(before, after)}"
    banned, plain, leaver = people["banned"], people["plain"], people["leaver"]
    assert await what_each_service_answers(broker, banned.token, plain.id) == {"auth": 403, "posts": 403, "users": 403}
    plain_answers = await what_each_service_answers(broker, plain.token, banned.id)
    assert plain_answers == {"auth": "ok", "posts": "ok", "users": 403}, plain_answers
    assert await what_each_service_answers(broker, leaver.token, plain.id) == {"auth": 401, "posts": 401, "users": 401}
    await still_serving(http, broker)
    if path != "events exchange":
        for service in SERVICES:  # parked next to the queue it died in, as shared/broker.py documents
            await find_dead_letter(broker, f"{service}.events", body["event_id"])


# -- malformed bodies under known routing keys --------------------------------------------------


def malformed_bodies(victim: User, marker: str) -> dict[str, tuple[str, bytes]]:
    """By name: (routing key, body); each would ban or revoke if a consumer applied it."""
    ok = {"event_id": str(uuid4()), "occurred_at": now()}

    def dumps(value: Any) -> bytes:
        return json.dumps(value).encode()

    return {
        "not JSON": ("user.banned", f'{{"user_id": "{victim.id}", "marker": "{marker}"'.encode()),
        "JSON array": ("user.banned", dumps([{**ok, "user_id": victim.id, "marker": marker}])),
        "no event_id": ("user.banned", dumps({"occurred_at": now(), "user_id": victim.id, "marker": marker})),
        "event_id not a UUID": ("user.banned", dumps({**ok, "event_id": f"not-a-uuid-{marker}", "user_id": victim.id})),
        "user_id not a UUID": ("user.banned", dumps({**ok, "user_id": f"{victim.id}-{marker}"})),
        "session.revoked without session_id": ("session.revoked", dumps({**ok, "user_id": victim.id, "marker": marker})),
    }


MALFORMED = ("not JSON", "JSON array", "no event_id", "event_id not a UUID", "user_id not a UUID", "session.revoked without session_id")


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_event_is_dead_lettered(
    case: str, http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil
) -> None:
    victim = await register(http, "victim")
    await wait_for_profile(db, wait_until, victim.id)
    marker = str(uuid4())
    bodies = malformed_bodies(victim, marker)
    assert tuple(bodies) == MALFORMED
    routing_key, body = bodies[case]
    before = await settled_fingerprint(db)

    await broker.event(routing_key, body, as_process=EVENTS[routing_key].owner.name)  # from its owner: only the body is wrong

    for service in CONSUMERS[routing_key]:
        parked = await find_dead_letter(broker, f"{service}.events", marker)
        assert parked.headers.get("x-original-routing-key") in (routing_key, routing_key.encode())
    after = await fingerprint(db, like=before)
    assert after == before, f"a malformed {routing_key} changed {changed_tables(before, after)}"
    assert await ban_rows(db, victim.id) == {"auth": False, "users": False, "posts": False, "users.profiles.banned": False}
    me = await broker.command("get-me", {}, token=victim.token)
    assert status(me) == "ok", me
    await still_serving(http, broker)
