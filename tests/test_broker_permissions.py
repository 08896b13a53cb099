"""Least privilege on the broker: each process's RabbitMQ user can do its job and nothing more.

The topology and the users are provisioned twice in throwaway vhosts, once by
`scripts/broker-permissions` and once by importing `deploy/rabbitmq/definitions.json` (what docker
compose loads), and every check runs against both. The grants are those of
`BROKER_TOPOLOGY=verify`: the processes' start-up paths run in that mode as their own users, and
declare mode is shown to work for a development user with full permissions. User names get a
unique prefix, since RabbitMQ users are broker-wide, so nothing else on the broker is touched. A
refusal is RabbitMQ closing the channel with ACCESS_REFUSED (403); everything that is allowed is
shown to have happened, not just to have raised nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import AMQPChannelError, ChannelAccessRefused

from gateway.broker_link import BrokerLink
from shared.broker import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    LIVE_QUEUE_PREFIX,
    command_queue_name,
    dead_letter_queue_name,
    event_queue_name,
)
from shared.client import CommandClient
from shared.events import public_events
from shared.topology import EXCHANGES, LIVE_QUEUE_ARGUMENTS, as_definitions, declare, open_exchange, open_service_queues

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None,
    reason="rabbitmqctl is not on PATH: these tests create users and vhosts on the local RabbitMQ node with it",
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "broker-permissions"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
BROKER = "127.0.0.1:5672"  # rabbitmqctl administers the local node

#: Each service user and the queue prefix its process uses (`run_service(NAME, ...)`).
SERVICES = {"auth_service": "auth", "users_service": "users", "posts_service": "posts"}
USERS = ("gateway", *SERVICES)
#: The development passwords in definitions.json, docker-compose.yml and the script's defaults.
DEV_PASSWORDS = {user: f"{user}-dev" for user in USERS}

# From the contract: who publishes which event.
EVENT_KEYS = ("user.registered", "session.revoked", "user.banned", "post.created", "post.deleted")
PUBLISHES = {
    "gateway": set(),
    "auth_service": {"user.registered", "session.revoked"},
    "users_service": {"user.banned"},
    "posts_service": {"post.created", "post.deleted"},
}


def rabbitmqctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args[:2])} failed: {result.stderr or result.stdout}"
    return result


def listed(*args: str) -> list[dict[str, Any]]:
    return json.loads(rabbitmqctl("--silent", *args, "--formatter", "json").stdout or "[]")


def run_script(vhost: str, prefix: str, passwords: dict[str, str] | None = None, *, admin_url: str) -> None:
    env = {**os.environ, "BROKER_USER_PREFIX": prefix, "ADMIN_AMQP_URL": admin_url}
    for user, password in (passwords or {}).items():
        env[f"{user.upper()}_AMQP_PASSWORD"] = password
    result = subprocess.run([str(SCRIPT), vhost], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"scripts/broker-permissions failed:\n{result.stdout}\n{result.stderr}"


def import_definitions(vhost: str, prefix: str) -> None:
    """Import definitions.json with its vhost and user names rewritten, and wait for it to land."""
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    assert [v["name"] for v in definitions["vhosts"]] == ["posts"], "definitions.json should define one vhost"
    definitions["vhosts"] = [{"name": vhost}]
    for user in definitions["users"]:
        user["name"] = prefix + user["name"]
    for entry in definitions["permissions"] + definitions["topic_permissions"]:
        entry["user"], entry["vhost"] = prefix + entry["user"], vhost
    for entry in definitions["exchanges"] + definitions["queues"] + definitions["bindings"]:
        entry["vhost"] = vhost
    rabbitmqctl("import_definitions", stdin=json.dumps(definitions))  # no path: standard input
    for _ in range(100):  # the import is asynchronous
        if len(listed("list_topic_permissions", "-p", vhost)) == len(definitions["topic_permissions"]) and (
            len(topology_of(vhost)["bindings"]) == len(definitions["bindings"])
        ):
            return
        time.sleep(0.1)
    raise AssertionError("the definitions import did not complete")


def topology_of(vhost: str) -> dict[str, list[dict[str, Any]]]:
    """The vhost's own exchanges, queues and bindings in definitions.json's shape: not the amq.*
    exchanges, not the default exchange's bindings, not a test's server-named queue."""

    def arguments(raw: list[list[Any]]) -> dict[str, Any]:
        return {key: value for key, _type, value in raw}

    flags = ("durable", "auto_delete")
    return {
        "exchanges": [
            {
                "name": e["name"],
                "vhost": vhost,
                "type": e["type"],
                **{f: e[f] for f in (*flags, "internal")},
                "arguments": arguments(e["arguments"]),
            }
            for e in listed("list_exchanges", "-p", vhost, "name", "type", *flags, "internal", "arguments")
            if e["name"] and not e["name"].startswith("amq.")
        ],
        "queues": [
            {"name": q["name"], "vhost": vhost, **{f: q[f] for f in flags}, "arguments": arguments(q["arguments"])}
            for q in listed("list_queues", "-p", vhost, "name", *flags, "arguments")
            if not q["name"].startswith("amq.gen-")
        ],
        "bindings": [
            {
                "source": b["source_name"],
                "vhost": vhost,
                "destination": b["destination_name"],
                "destination_type": b["destination_kind"],
                "routing_key": b["routing_key"],
                "arguments": arguments(b["arguments"]),
            }
            for b in listed("list_bindings", "-p", vhost, "source_name", "destination_name", "destination_kind", "routing_key", "arguments")
            if b["source_name"] and not b["destination_name"].startswith("amq.gen-")
        ],
    }


def canonical(topology: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {kind: sorted(json.dumps(entry, sort_keys=True) for entry in entries) for kind, entries in topology.items()}


def granted(vhost: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """What the vhost grants the four process users, prefix taken off, in definitions.json's shape."""

    def unprefixed(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ours = [{**e, "user": e["user"].removeprefix(prefix), "vhost": "posts"} for e in entries]
        return sorted((entry for entry in ours if entry["user"] in USERS), key=lambda entry: entry["user"])

    return {
        "permissions": unprefixed(listed("list_permissions", "-p", vhost)),
        "topic_permissions": unprefixed(listed("list_topic_permissions", "-p", vhost)),
    }


def remove(vhost: str, prefix: str) -> None:
    """Delete the throwaway vhost and every user made for it (a missing one is fine)."""
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)
    for user in (*USERS, "observer", "developer"):
        subprocess.run(["rabbitmqctl", "delete_user", prefix + user], capture_output=True, timeout=60)


async def authenticates(vhost: str, user: str, password: str) -> bool:
    try:
        connection = await aio_pika.connect(f"amqp://{user}:{password}@{BROKER}/{vhost}")
    except aio_pika.exceptions.ProbableAuthenticationError:
        return False
    await connection.close()
    return True


@dataclass
class Provisioned:
    """A throwaway vhost with the four users, and an unrestricted observer to check what arrived."""

    source: str
    vhost: str
    prefix: str
    passwords: dict[str, str]
    observer: AbstractConnection | None = None
    events_seen: AbstractQueue | None = None

    def url(self, user: str) -> str:
        return f"amqp://{self.prefix}{user}:{self.passwords[user]}@{BROKER}/{self.vhost}"


@pytest.fixture(scope="module", params=["script", "definitions"])
async def broker_users(request: pytest.FixtureRequest) -> AsyncIterator[Provisioned]:
    run = uuid4().hex[:10]
    provisioned = Provisioned(request.param, f"zt_perm_{run}", f"zt_perm_{run}_", {"observer": f"pw-{uuid4().hex}"})
    vhost, prefix = provisioned.vhost, provisioned.prefix
    try:
        # The observer is an admin of the vhost: the script declares the topology as that user.
        rabbitmqctl("add_user", f"{prefix}observer", stdin=provisioned.passwords["observer"])
        if request.param == "script":
            provisioned.passwords.update({user: f"pw-{uuid4().hex}" for user in USERS})
            run_script(vhost, prefix, provisioned.passwords, admin_url=provisioned.url("observer"))
        else:
            provisioned.passwords.update(DEV_PASSWORDS)
            import_definitions(vhost, prefix)
            rabbitmqctl("set_permissions", "-p", vhost, f"{prefix}observer", ".*", ".*", ".*")
        provisioned.observer = await aio_pika.connect(provisioned.url("observer"))
        channel = await provisioned.observer.channel()
        provisioned.events_seen = await channel.declare_queue(exclusive=True)
        await provisioned.events_seen.bind(EVENTS_EXCHANGE, routing_key="#")
        yield provisioned
    finally:
        if provisioned.observer is not None:
            await provisioned.observer.close()
        remove(vhost, prefix)


@asynccontextmanager
async def connected(broker_users: Provisioned, user: str) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker_users.url(user))
    try:
        yield connection
    finally:
        await connection.close()


async def assert_refused(operation: Awaitable[Any]) -> None:
    """The broker must refuse: the channel closed with ACCESS_REFUSED (403), not any other error."""
    try:
        await asyncio.wait_for(operation, 10)
    except ChannelAccessRefused:
        return
    except AMQPChannelError as other:
        raise AssertionError(f"expected ACCESS_REFUSED, the channel closed with {other!r}") from None
    raise AssertionError("the broker allowed it")


async def publish(connection: AbstractConnection, exchange: str, routing_key: str, message_id: str | None = None) -> None:
    """Publish with publisher confirms, so a refusal surfaces here."""
    channel = await connection.channel(publisher_confirms=True)
    target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
    await target.publish(
        aio_pika.Message(b"{}", content_type="application/json", message_id=message_id or uuid4().hex),
        routing_key=routing_key,
        mandatory=False,
    )
    if not channel.is_closed:
        await channel.close()


async def ignore(message: AbstractIncomingMessage) -> None:
    """A consumer that takes nothing: only whether consuming is allowed matters."""


async def consume(connection: AbstractConnection, queue: str) -> None:
    channel = await connection.channel()
    source = await channel.get_queue(queue, ensure=False)
    await source.cancel(await source.consume(ignore))
    await channel.close()


async def take(connection: AbstractConnection, queue: str, message_id: str, timeout: float = 5.0) -> AbstractIncomingMessage | None:
    """Take the message with `message_id` off `queue` (dropping others); None if it never comes."""
    channel = await connection.channel()
    source = await channel.get_queue(queue, ensure=False)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while asyncio.get_running_loop().time() < deadline:
            message = await source.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            elif message.message_id == message_id:
                return message
        return None
    finally:
        await channel.close()


# -- provisioning -------------------------------------------------------------------------------


async def test_the_vhost_grants_exactly_what_definitions_json_says(broker_users: Provisioned) -> None:
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    expected = {key: sorted(definitions[key], key=lambda entry: entry["user"]) for key in ("permissions", "topic_permissions")}
    assert granted(broker_users.vhost, broker_users.prefix) == expected
    tagged = {user["user"]: user["tags"] for user in listed("list_users") if user["user"].startswith(broker_users.prefix)}
    assert tagged == {broker_users.prefix + user: [] for user in (*USERS, "observer")}, "no process user may have tags"


async def test_the_vhost_holds_exactly_the_topology_of_definitions_json(broker_users: Provisioned) -> None:
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    expected = {
        kind: [{**entry, "vhost": broker_users.vhost} for entry in definitions[kind]] for kind in ("exchanges", "queues", "bindings")
    }
    assert canonical(topology_of(broker_users.vhost)) == canonical(expected)


async def test_the_script_is_idempotent_and_takes_passwords_from_the_environment() -> None:
    """The script also creates the vhost, and then lets ADMIN_AMQP_URL's user declare the topology on it."""
    run = uuid4().hex[:10]
    vhost, prefix = f"zt_perm_{run}", f"zt_perm_{run}_"
    admin_password = f"pw-{uuid4().hex}"
    admin_url = f"amqp://{prefix}observer:{admin_password}@{BROKER}/{vhost}"
    try:
        rabbitmqctl("add_user", f"{prefix}observer", stdin=admin_password)
        run_script(vhost, prefix, admin_url=admin_url)
        for user in USERS:
            assert await authenticates(vhost, prefix + user, DEV_PASSWORDS[user]), (
                f"{user}'s default password is not {DEV_PASSWORDS[user]!r}"
            )
        first = granted(vhost, prefix)
        topology = canonical(topology_of(vhost))
        assert topology == canonical(as_definitions(vhost))
        passwords = {user: f"pw-{uuid4().hex}" for user in USERS}
        run_script(vhost, prefix, passwords, admin_url=admin_url)
        for user in USERS:
            assert await authenticates(vhost, prefix + user, passwords[user]), f"{user}'s password was not changed on a second run"
            assert not await authenticates(vhost, prefix + user, DEV_PASSWORDS[user]), f"{user}'s old password still works"
        assert granted(vhost, prefix) == first
        assert canonical(topology_of(vhost)) == topology
    finally:
        remove(vhost, prefix)


async def test_declare_mode_builds_the_same_topology_for_a_development_user() -> None:
    """BROKER_TOPOLOGY=declare (the default): a user with full permissions, on an empty vhost, gets
    exactly what an admin's `python -m shared.topology declare` makes, from each process's own path."""
    run = uuid4().hex[:10]
    vhost, prefix, password = f"zt_perm_{run}", f"zt_perm_{run}_", f"pw-{uuid4().hex}"
    try:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("add_user", f"{prefix}developer", stdin=password)
        rabbitmqctl("set_permissions", "-p", vhost, f"{prefix}developer", ".*", ".*", ".*")
        connection = await aio_pika.connect(f"amqp://{prefix}developer:{password}@{BROKER}/{vhost}")
        try:
            client = CommandClient(connection, user_id=f"{prefix}developer", timeout=5, topology="declare")  # the gateway
            await client.start()
            await client.close()
            for queue in SERVICES.values():  # each service, as shared/service.py runs it
                await open_service_queues(await connection.channel(), queue, "declare")
        finally:
            await connection.close()
        assert canonical(topology_of(vhost)) == canonical(as_definitions(vhost))
    finally:
        remove(vhost, prefix)


def test_the_script_explains_itself_without_a_vhost() -> None:
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "scripts/broker-permissions VHOST" in result.stderr


# -- events: each service publishes only its own routing keys -------------------------------------


@pytest.mark.parametrize("routing_key", EVENT_KEYS)
@pytest.mark.parametrize("user", USERS)
async def test_a_process_publishes_only_its_own_events(broker_users: Provisioned, user: str, routing_key: str) -> None:
    assert broker_users.observer is not None and broker_users.events_seen is not None
    message_id = uuid4().hex
    async with connected(broker_users, user) as connection:
        if routing_key in PUBLISHES[user]:
            await publish(connection, EVENTS_EXCHANGE, routing_key, message_id)
            arrived = await take(broker_users.observer, broker_users.events_seen.name, message_id)
            assert arrived is not None and arrived.routing_key == routing_key, f"{user}'s {routing_key} never arrived"
        else:
            await assert_refused(publish(connection, EVENTS_EXCHANGE, routing_key, message_id))
            assert await take(broker_users.observer, broker_users.events_seen.name, message_id, timeout=0.3) is None


# -- services: their own queues, the real start-up path, nobody else's queues ---------------------


@pytest.mark.parametrize("user", SERVICES)
async def test_a_service_starts_in_verify_mode_as_its_own_user(broker_users: Provisioned, user: str) -> None:
    """What shared/service.py does at start-up with BROKER_TOPOLOGY=verify, as the service's own
    user: passive-declare the exchanges and its queues, consume, park a dead letter."""
    queue = SERVICES[user]
    async with connected(broker_users, user) as connection:
        consume_channel = await connection.channel(publisher_confirms=False)
        confirm_channel = await connection.channel(publisher_confirms=True)
        command_queue, event_queue = await open_service_queues(consume_channel, queue, "verify")
        for declared in (command_queue, event_queue):
            await declared.cancel(await declared.consume(ignore))
        assert not consume_channel.is_closed and not confirm_channel.is_closed

        # The runner parks a message by publishing it to dead-letters, keyed by the queue it died in.
        message_id = uuid4().hex
        await publish(connection, DEAD_LETTER_EXCHANGE, command_queue_name(queue), message_id)
    assert broker_users.observer is not None
    parked = await take(broker_users.observer, dead_letter_queue_name(command_queue_name(queue)), message_id)
    assert parked is not None, f"{user}'s dead letter did not reach {dead_letter_queue_name(command_queue_name(queue))}"


@pytest.mark.parametrize("user", USERS)
async def test_no_process_may_declare_the_topology(broker_users: Provisioned, user: str) -> None:
    """Declare mode needs configure, which verify mode's users do not have."""
    async with connected(broker_users, user) as connection:
        await assert_refused(open_exchange(await connection.channel(), COMMANDS_EXCHANGE, "declare"))
        await assert_refused(open_service_queues(await connection.channel(), SERVICES.get(user, "posts"), "declare"))


@pytest.mark.parametrize(("user", "other"), [(user, other) for user in SERVICES for other in SERVICES.values() if other != SERVICES[user]])
async def test_a_service_cannot_use_another_services_queues(broker_users: Provisioned, user: str, other: str) -> None:
    async with connected(broker_users, user) as connection:
        await assert_refused(consume(connection, command_queue_name(other)))
        await assert_refused(consume(connection, event_queue_name(other)))
        await assert_refused(declare(await connection.channel(), [other]))


# -- the gateway: commands out, replies in, nothing else -------------------------------------------


async def test_the_gateway_starts_in_verify_mode_and_checks_readiness(broker_users: Provisioned) -> None:
    """gateway/broker_link.py's real start-up with BROKER_TOPOLOGY=verify, as the gateway's user."""
    link = BrokerLink(broker_users.url("gateway"), rpc_timeout=5, topology="verify")
    link.start()
    try:
        for _ in range(100):
            if link.up:
                break
            await asyncio.sleep(0.1)
        assert link.up and link.connection is not None, "the gateway's broker link did not come up"
        # gateway/health.py: a passive declare reports each command queue's consumers.
        channel = await link.connection.channel()
        for queue in SERVICES.values():
            declared = await channel.declare_queue(command_queue_name(queue), passive=True)
            assert declared.declaration_result.consumer_count == 0
    finally:
        await link.close()


async def test_the_gateway_publishes_commands_and_nothing_else(broker_users: Provisioned) -> None:
    assert broker_users.observer is not None
    message_id = uuid4().hex
    async with connected(broker_users, "gateway") as connection:
        await publish(connection, COMMANDS_EXCHANGE, "get-post", message_id)
        assert await take(broker_users.observer, command_queue_name("posts"), message_id) is not None
        await assert_refused(publish(connection, EVENTS_EXCHANGE, "post.created"))
        await assert_refused(publish(connection, DEAD_LETTER_EXCHANGE, command_queue_name("posts")))
        # No write on amq.default: the gateway cannot drop a message straight into a queue.
        await assert_refused(publish(connection, "", event_queue_name("auth")))


async def test_the_gateway_keeps_its_own_queue_of_the_public_events_only(broker_users: Provisioned) -> None:
    """The read side's queue: the gateway may declare `gateway.live.*` (dead-lettering into its own
    exchange) and bind it to the public events, but not to a private one such as session.revoked."""
    async with connected(broker_users, "gateway") as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{LIVE_QUEUE_PREFIX}{uuid4().hex}", exclusive=True, arguments=LIVE_QUEUE_ARGUMENTS)
        for key in public_events():
            await queue.bind(EVENTS_EXCHANGE, routing_key=key)
        for key in ("session.revoked", "#"):  # each refusal closes the channel: a new one each time
            other = await (await connection.channel()).declare_queue(f"{LIVE_QUEUE_PREFIX}{uuid4().hex}", exclusive=True)
            await assert_refused(other.bind(EVENTS_EXCHANGE, routing_key=key))
        await assert_refused((await connection.channel()).declare_queue(f"not-{LIVE_QUEUE_PREFIX}{uuid4().hex}", exclusive=True))
        # Its dead-letter exchange reaches gateway.events.dead alone, never a service's.
        await assert_refused(publish(connection, DEAD_LETTER_EXCHANGE, event_queue_name("posts")))


@pytest.mark.parametrize("queue", SERVICES.values())
async def test_the_gateway_cannot_declare_or_consume_a_service_queue(broker_users: Provisioned, queue: str) -> None:
    async with connected(broker_users, "gateway") as connection:
        await assert_refused(consume(connection, command_queue_name(queue)))
        await assert_refused(consume(connection, event_queue_name(queue)))
        await assert_refused(declare(await connection.channel(), [queue]))


async def test_a_command_round_trip_works_under_least_privilege(broker_users: Provisioned) -> None:
    """The gateway's CommandClient calls; posts_service's user takes the command and replies by direct reply-to."""
    async with connected(broker_users, "posts_service") as service, connected(broker_users, "gateway") as gateway:
        commands, _ = await open_service_queues(await service.channel(), "posts", "verify")

        async def answer(message: AbstractIncomingMessage) -> None:
            if message.reply_to:  # as shared/runner.py replies: default exchange, not mandatory
                await message.channel.basic_publish(
                    json.dumps({"ok": True, "result": {"answered": message.type}}).encode(),
                    exchange="",
                    routing_key=message.reply_to,
                    properties=aio_pika.Message(b"", correlation_id=message.correlation_id).properties,
                    mandatory=False,
                )
            await message.ack()

        await commands.consume(answer)
        client = CommandClient(gateway, user_id=f"{broker_users.prefix}gateway", timeout=10, topology="verify")
        await client.start()
        assert await client.call("get-post", {"post_id": str(uuid4())}) == {"answered": "get-post"}
        await client.close()


# -- the topology is the admin's: no process binds or deletes (closed by BROKER_TOPOLOGY=verify) --


@pytest.mark.parametrize(
    ("user", "queue", "key"),
    [
        ("posts_service", command_queue_name("posts"), "login"),
        ("posts_service", event_queue_name("posts"), "login"),
        ("users_service", command_queue_name("users"), "create-post"),
        ("auth_service", command_queue_name("auth"), "ban-user"),
        ("posts_service", command_queue_name("posts"), "create-post"),  # not even its own key
    ],
)
async def test_a_service_cannot_bind_its_queue_to_another_services_commands(
    broker_users: Provisioned, user: str, queue: str, key: str
) -> None:
    """Binding needs read on `commands`, which no process has: `login`'s passwords stay with auth."""
    async with connected(broker_users, user) as connection:
        channel = await connection.channel()
        own = await channel.get_queue(queue, ensure=False)
        await assert_refused(own.bind(COMMANDS_EXCHANGE, routing_key=key))


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("user", USERS)
async def test_no_process_can_delete_a_shared_exchange(broker_users: Provisioned, user: str, exchange: str) -> None:
    async with connected(broker_users, user) as connection:
        channel = await connection.channel()
        # if_unused: the exchange has bindings, so an allowed delete fails 406 and nothing is lost.
        await assert_refused(channel.exchange_delete(exchange, if_unused=True))


@pytest.mark.parametrize("user", USERS)
async def test_no_process_can_delete_a_queue(broker_users: Provisioned, user: str) -> None:
    queue = command_queue_name(SERVICES.get(user, "posts"))
    async with connected(broker_users, user) as connection:
        channel = await connection.channel()
        await assert_refused(channel.queue_delete(queue, if_unused=True, if_empty=True))


# -- what RabbitMQ permissions cannot express (see README, "Least privilege on the broker") --------

KNOWN_GAP = pytest.mark.xfail(strict=True, raises=AssertionError)


@KNOWN_GAP(reason="replies need write on amq.default, and the default exchange reaches every queue by name")
async def test_a_service_cannot_put_a_message_on_another_services_queue(broker_users: Provisioned) -> None:
    async with connected(broker_users, "posts_service") as connection:
        await assert_refused(publish(connection, "", event_queue_name("auth")))
