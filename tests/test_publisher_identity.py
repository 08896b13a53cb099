"""The broker vouches for publishers: who sent a message is its AMQP `user_id`, which RabbitMQ checks.

The finding: anyone with broker credentials could publish `session.revoked` or `user.banned` on
`events` and sign anyone out or ban any admin, and could set `x-client-address` on a login to
spray passwords past the per-address limit or lock another address out. Each process now connects
as its own RabbitMQ user and stamps it on everything it publishes, so:

- an event from anyone but its owning service (the tests' guest, an outsider with full broker
  credentials) is parked in every consumer's `<service>.events.dead`, counted, and changes nothing;
  the same event from its owner is applied (the positive control);
- a `user_id` that is not the publishing connection's is refused by RabbitMQ itself, and a service
  cannot publish another service's event at all (topic permissions);
- a command carrying `x-client-address` from anyone but the gateway is refused (403) and parked,
  without a login failure counted against the address it names; a login from anyone but the
  gateway counts against its publisher (`broker:<user>`), so skipping the gateway is no way around
  the per-address limit; the gateway's own address is believed;
- every message each process publishes (commands, replies, events, parked messages) carries its
  own user;
- an operator replays a parked event through its owner (`python -m shared.dead_letters replay`
  puts it in the owner's outbox), and only one the owner really published.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPChannelError, ChannelAccessRefused

from shared.declarations import SERVICE_NAMES
from shared.events import EVENTS
from tests.support.accounts import User, register
from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.metrics import sample_of
from tests.support.stack import ROOT, Stack

POST = {"title": "Who said so?", "body": "The broker did"}


def now() -> str:
    return datetime.now(UTC).isoformat()


def status(reply: dict[str, Any] | None) -> int | str:
    assert reply is not None
    return "ok" if reply["ok"] is True else reply["error"]["status"]


async def metric(http: aiohttp.ClientSession, stack: Stack, service: str, name: str, **labels: str) -> float:
    async with http.get(stack.http_url(service) + "/metrics") as response:
        return sample_of(await response.text(), name, **labels)


async def parked_everywhere(broker: BrokerProbe, services: tuple[str, ...], marker: str) -> dict[str, AbstractIncomingMessage]:
    """Each service's parked copy of the event holding `marker`."""
    return {s: await broker.parked(f"{s}.events", lambda m: marker.encode() in m.body) for s in services}


async def session_works(broker: BrokerProbe, user: User) -> dict[str, int | str]:
    return {
        "auth": status(await broker.command("get-me", {}, token=user.token)),
        "posts": status(await broker.command("create-post", POST, token=user.token)),
    }


def consumers(routing_key: str) -> tuple[str, ...]:
    return tuple(s.name for s in EVENTS[routing_key].consumers)


# -- events from anyone but their owner ---------------------------------------------------------


@pytest.mark.parametrize("routing_key", ["session.revoked", "user.banned"])
async def test_an_event_from_an_outsider_is_parked_and_changes_nothing(
    routing_key: str,
    http: aiohttp.ClientSession,
    plain_http: aiohttp.ClientSession,
    stack: Stack,
    broker: BrokerProbe,
    db: asyncpg.Pool,
    admin: User,
) -> None:
    victim = await register(http, "victim")
    target = admin if routing_key == "user.banned" else victim  # ban any admin, or sign anyone out
    body: dict[str, Any] = {"event_id": str(uuid4()), "occurred_at": now(), "user_id": target.id}
    body |= {"session_id": target.session_id} if routing_key == "session.revoked" else {"by": victim.id, "reason": "forged"}
    heard_by = consumers(routing_key)
    counted = {s: await metric(plain_http, stack, s, "wrong_publisher_total", queue=f"{s}.events") for s in heard_by}

    await broker.event(routing_key, body)  # as guest: full broker credentials, no process's user

    parked = await parked_everywhere(broker, heard_by, body["event_id"])
    for service, message in parked.items():
        reason = str(message.headers.get("x-dead-letter-reason"))
        assert "only accepted from" in reason and EVENTS[routing_key].owner.package in reason, reason
        assert message.headers.get("x-original-user-id") in ("", b""), "guest set no user_id"
        assert await metric(plain_http, stack, service, "wrong_publisher_total", queue=f"{service}.events") == counted[service] + 1
    for schema in SERVICE_NAMES:
        assert not await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.seen_events WHERE event_id = $1)", body["event_id"])
        assert not await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.revoked_sessions WHERE session_id = $1)", target.session_id)
        assert not await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.banned_accounts WHERE user_id = $1)", target.id)
    assert await session_works(broker, target) == {"auth": "ok", "posts": "ok"}


async def test_the_same_event_from_its_owner_is_applied(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil
) -> None:
    """Positive control: the owner's `session.revoked` signs the session out everywhere."""
    user = await register(http, "owned")
    body = {"event_id": str(uuid4()), "occurred_at": now(), "user_id": user.id, "session_id": user.session_id}

    await broker.event("session.revoked", body, as_process="auth")

    async def revoked_everywhere() -> bool:
        return all(
            [
                await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.revoked_sessions WHERE session_id = $1)", user.session_id)
                for s in SERVICE_NAMES
            ]
        )

    await wait_until(revoked_everywhere, timeout=5.0)
    assert await session_works(broker, user) == {"auth": 401, "posts": 401}


async def test_rabbitmq_refuses_a_forged_user_id(broker: BrokerProbe, db: asyncpg.Pool) -> None:
    """guest claiming to be auth_service: RabbitMQ closes the channel (PRECONDITION_FAILED), and
    nothing reaches any consumer."""
    event_id = str(uuid4())
    body = json.dumps({"event_id": event_id, "occurred_at": now(), "user_id": str(uuid4()), "session_id": str(uuid4())}).encode()
    channel = await broker.open_channel(publisher_confirms=True)
    exchange = await channel.get_exchange("events", ensure=False)
    with pytest.raises(AMQPChannelError) as refused:
        await asyncio.wait_for(exchange.publish(aio_pika.Message(body, user_id=broker.user_of("auth")), routing_key="session.revoked"), 10)
    assert "user_id" in str(refused.value), refused.value
    await asyncio.sleep(0.5)
    for schema in SERVICE_NAMES:
        assert not await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.seen_events WHERE event_id = $1)", event_id)


async def test_a_service_cannot_publish_another_services_event(broker: BrokerProbe) -> None:
    """posts_service's user may not write `user.banned` on `events` (topic permissions)."""
    body = json.dumps({"event_id": str(uuid4()), "occurred_at": now(), "user_id": str(uuid4())}).encode()
    connection = await aio_pika.connect(broker.url_of("posts"))
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("events", ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await asyncio.wait_for(exchange.publish(aio_pika.Message(body, user_id=broker.user_of("posts")), routing_key="user.banned"), 10)
    finally:
        await connection.close()


# -- x-client-address only from the gateway -----------------------------------------------------


async def failures_for(db: asyncpg.Pool, address: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM auth.login_failures WHERE address = $1", address))


async def test_a_client_address_from_anyone_but_the_gateway_is_parked_and_counts_nothing(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool
) -> None:
    """Locking another address out: guest's failed logins 'from' it are refused before any
    password is checked, parked, and leave that address as it was."""
    user = await register(http, "sprayed")
    victim_address = f"198.51.100.{uuid4().int % 250 + 1}"
    before = await failures_for(db, victim_address)
    message_id = str(uuid4())

    reply = await broker.command(
        "login", {"email": user.email, "password": "not-the-password"}, headers={"x-client-address": victim_address}, message_id=message_id
    )

    assert status(reply) == 403, reply
    assert reply is not None and "gateway" in reply["error"]["detail"]
    parked = await broker.parked("auth.commands", lambda m: m.message_id == message_id)
    assert "x-client-address" in str(parked.headers.get("x-dead-letter-reason"))
    assert b"not-the-password" not in parked.body, "a parked login keeps no password"
    assert await failures_for(db, victim_address) == before
    assert await db.fetchval("SELECT count(*) FROM auth.login_failures WHERE account_key = $1", user.email) == 0
    # The gateway's word for the same address is believed, and that address is not locked out.
    fine = await broker.command(
        "login", {"email": user.email, "password": user.password}, headers={"x-client-address": victim_address}, as_process="gateway"
    )
    assert status(fine) == "ok", fine


async def test_a_login_from_anyone_but_the_gateway_counts_against_its_publisher(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool
) -> None:
    """Spraying past the per-address limit: a login published straight to the broker is limited
    under its publisher's name, whatever address it claims or leaves out."""
    user = await register(http, "spray-target")
    # Named by its user_id when it gives one (RabbitMQ checks it); all that give none count as one.
    for user_id, publisher in ((broker.outsider, f"broker:{broker.outsider}"), (None, "broker:-")):
        before = await failures_for(db, publisher)
        reply = await broker.command("login", {"email": user.email, "password": "wrong-password-1"}, properties={"user_id": user_id})
        assert status(reply) == 401, reply
        assert await failures_for(db, publisher) == before + 1, publisher
    made_up = [f"192.0.2.{n}" for n in range(1, 4)]
    for address in made_up:
        spray = await broker.command("login", {"email": user.email, "password": "wrong-password-2"}, headers={"x-client-address": address})
        assert status(spray) == 403, spray
    assert [await failures_for(db, address) for address in made_up] == [0, 0, 0]


# -- everything a process publishes carries its user ------------------------------------------


@pytest.fixture
async def taps(broker: BrokerProbe) -> AsyncIterator[dict[str, aio_pika.abc.AbstractQueue]]:
    """Copies of what is published on `events` and of `get-user` commands on `commands`."""
    channel = await broker.open_channel()
    events = await channel.declare_queue(exclusive=True, auto_delete=True)
    await events.bind("events", routing_key="#")
    commands = await channel.declare_queue(exclusive=True, auto_delete=True)
    await commands.bind("commands", routing_key="get-user")
    yield {"events": events, "commands": commands}
    await channel.close()


async def drain(queue: aio_pika.abc.AbstractQueue, wait_until: WaitUntil, want: Any) -> list[AbstractIncomingMessage]:
    seen: list[AbstractIncomingMessage] = []

    async def arrived() -> bool:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            seen.append(message)
        return want(seen)

    await wait_until(arrived, timeout=5.0)
    return seen


async def test_every_process_stamps_its_own_user_on_what_it_publishes(
    http: aiohttp.ClientSession, broker: BrokerProbe, admin: User, taps: dict[str, aio_pika.abc.AbstractQueue], wait_until: WaitUntil
) -> None:
    user = await register(http, "stamped")  # auth: user.registered
    async with http.post("/posts", json=POST, headers=user.auth) as response:  # gateway: create-post; posts: post.created
        assert response.status == 201
    async with http.post(f"/users/{user.id}/ban", json={"reason": "stamps"}, headers=admin.auth) as response:  # users: user.banned
        assert response.status == 200
    async with http.get(f"/users/{user.id}") as response:  # gateway: get-user
        assert response.status == 200

    def about(message: AbstractIncomingMessage) -> bool:
        return user.id in message.body.decode(errors="replace")

    owners = {"user.registered": "auth", "post.created": "posts", "user.banned": "users"}
    events = await drain(taps["events"], wait_until, lambda seen: {m.routing_key for m in seen if about(m)} >= set(owners))
    for message in (m for m in events if about(m) and m.routing_key in owners):
        assert message.user_id == broker.user_of(owners[message.routing_key or ""]), (message.routing_key, message.user_id)
    commands = await drain(taps["commands"], wait_until, lambda seen: any(about(m) for m in seen))
    assert {m.user_id for m in commands if about(m)} == {broker.user_of("gateway")}


async def test_replies_and_parked_messages_carry_the_services_user(broker: BrokerProbe) -> None:
    channel = await broker.open_channel()
    try:
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        message_id = str(uuid4())
        await broker.command("get-post", body=b"{not json", message_id=message_id, reply=False, properties={"reply_to": replies.name})

        async def reply() -> AbstractIncomingMessage | None:
            return await replies.get(no_ack=True, fail=False)

        for _ in range(100):
            answered = await reply()
            if answered is not None:
                break
            await asyncio.sleep(0.05)
        assert answered is not None, "no reply"
        assert answered.user_id == broker.user_of("posts")
    finally:
        await channel.close()
    parked = await broker.parked("posts.commands", lambda m: m.message_id == message_id)
    assert parked.user_id == broker.user_of("posts")
    assert parked.headers.get("x-original-user-id") in ("", b""), "the outsider's message had no user_id"


# -- operator replay of parked events -----------------------------------------------------------


def dead_letters(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's tool, as the vhost's admin (AMQP_URL) with the stack's DATABASE_URL."""
    return subprocess.run(
        [sys.executable, "-m", "shared.dead_letters", *args], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60
    )


async def park(broker: BrokerProbe, parker: str, queue: str, body: dict[str, Any], original_user: str) -> None:
    """Park an event in `<queue>.dead` as service `parker` would (the runner's headers)."""
    channel = await broker.channel_of(parker)
    exchange = await channel.get_exchange("dead-letters", ensure=False)
    await exchange.publish(
        aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            message_id=body["event_id"],
            user_id=broker.user_of(parker),
            headers={
                "x-dead-letter-reason": "simulated: the database was gone",
                "x-original-exchange": "events",
                "x-original-routing-key": "session.revoked",
                "x-original-user-id": original_user,
            },
        ),
        routing_key=queue,
    )


async def test_a_parked_event_is_replayed_through_its_owner(
    http: aiohttp.ClientSession, stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil
) -> None:
    user = await register(http, "replayed")
    body = {"event_id": str(uuid4()), "occurred_at": now(), "user_id": user.id, "session_id": user.session_id}
    await park(broker, "users", "users.events", body, broker.user_of("auth"))

    async def listed() -> bool:
        return body["event_id"] in dead_letters(stack, "list", "users.events").stdout

    await wait_until(listed, timeout=5.0)
    replayed = dead_letters(stack, "replay", "users.events", "--id", body["event_id"])
    assert replayed.returncode == 0 and f"replayed {body['event_id']}" in replayed.stdout, replayed

    async def revoked_everywhere() -> bool:
        return all(
            [
                await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {s}.revoked_sessions WHERE session_id = $1)", user.session_id)
                for s in SERVICE_NAMES
            ]
        )

    await wait_until(revoked_everywhere, timeout=5.0)


@pytest.mark.parametrize("who", ["forged by the outsider", "claimed by another service"])
async def test_replay_never_lends_the_owner_its_name(
    who: str, http: aiohttp.ClientSession, stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, wait_until: WaitUntil
) -> None:
    user = await register(http, "not-replayed")
    body = {"event_id": str(uuid4()), "occurred_at": now(), "user_id": user.id, "session_id": user.session_id}
    if who == "forged by the outsider":
        queue = "posts.events"
        await broker.event("session.revoked", body)  # parked by every consumer as not auth's
    else:
        # posts_service parks, in users_service's queue, a session.revoked it says auth sent.
        queue = "users.events"
        await park(broker, "posts", queue, body, broker.user_of("auth"))

    async def listed() -> bool:
        return body["event_id"] in dead_letters(stack, "list", queue).stdout

    await wait_until(listed, timeout=5.0)
    replayed = dead_letters(stack, "replay", queue, "--id", body["event_id"])

    assert replayed.returncode == 0 and "not replayed" in replayed.stdout, replayed
    await asyncio.sleep(1.0)
    for schema in SERVICE_NAMES:
        assert not await db.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.revoked_sessions WHERE session_id = $1)", user.session_id)
    assert await broker.parked(queue, lambda m: m.message_id == body["event_id"]) is not None, "it stays parked"
