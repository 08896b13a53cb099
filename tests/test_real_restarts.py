"""The machine's real RabbitMQ and PostgreSQL restarted under load: nothing accepted is lost,
nothing happens twice, no caller gets a 500 and no process logs an error the restart does not
explain (tests/support/faults.py). Across the RabbitMQ restart the read side holds too: open `/live`
streams are told to reload and hear what follows, and a warm cache serves no stale answer. These stop shared services, so they run only against local ones
(CI runs its tests one at a time); with TEST_AMQP_URL / TEST_DATABASE_URL elsewhere they are skipped.

The RabbitMQ test can instead stop a node of your own, so that it can be repeated while others
use the machine's broker: start a second node on another port and name it,

    RABBITMQ_NODENAME=faults@localhost TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5699/ \
        scripts/test tests/test_real_restarts.py -k rabbitmq

(OPERATIONS.md shows how to start one). rabbitmqctl then talks to that node, and the test stops
it only if that node is the one listening on TEST_AMQP_URL's port. The PostgreSQL test likewise
restarts the cluster PGCLUSTER names (`15/faults`, postgresql-common's variable) when
TEST_DATABASE_URL is on loopback at that cluster's port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.faults import BROKER_RESTART, DATABASE_RESTART, FaultWatch
from tests.support.sse import live_streams
from tests.support.stack import Stack

pytestmark = pytest.mark.fault

LOCAL = not os.environ.get("TEST_AMQP_URL") and not os.environ.get("TEST_DATABASE_URL")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def rabbitmq_node_to_stop() -> bool:
    """Whether this run may stop the RabbitMQ node it uses: the machine's local one when no
    TEST_AMQP_URL is set (CI), or the node RABBITMQ_NODENAME names, when TEST_AMQP_URL is on
    loopback and that node is what listens on its port (never someone else's broker)."""
    if not shutil.which("rabbitmqctl"):
        return False
    if LOCAL:
        return True
    url = urllib.parse.urlsplit(os.environ.get("TEST_AMQP_URL", ""))
    node = os.environ.get("RABBITMQ_NODENAME")
    if not node or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return False
    try:
        listing = subprocess.run(
            ["rabbitmq-diagnostics", "-n", node, "listeners", "--formatter", "json"], capture_output=True, text=True, timeout=60
        )
        listeners = json.loads(listing.stdout.strip().splitlines()[-1])["listeners"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return False
    return any(entry.get("protocol") == "amqp" and entry.get("port") == (url.port or 5672) for entry in listeners)


def rabbitmqctl(*args: str) -> list[str]:
    """A rabbitmqctl command for the node under test (RABBITMQ_NODENAME's, else the default)."""
    node = os.environ.get("RABBITMQ_NODENAME")
    return ["rabbitmqctl", *(["-n", node] if node else []), *args]


async def create_with_retries(http: aiohttp.ClientSession, user: User, key: str, outcomes: dict[str, int], faults: FaultWatch) -> str:
    """What a well-behaved client does: retry 503/504 with the same Idempotency-Key until it lands."""
    headers = {**user.auth, "Idempotency-Key": key}
    deadline = time.monotonic() + 90
    while True:
        try:
            async with http.post("/posts", json={"title": key, "body": "b"}, headers=headers) as response:
                faults.saw(response.status, "POST /posts")
                outcomes[str(response.status)] = outcomes.get(str(response.status), 0) + 1
                if response.status == 201:
                    return str((await response.json())["id"])
                assert response.status in (503, 504), await response.text()
        except aiohttp.ClientError:
            outcomes["connection error"] = outcomes.get("connection error", 0) + 1
        assert time.monotonic() < deadline, f"{key} never landed: {outcomes}"
        await asyncio.sleep(0.3)


@pytest.mark.skipif(not rabbitmq_node_to_stop(), reason="needs rabbitmqctl and a local RabbitMQ node it may stop")
async def test_rabbitmq_restart_under_load(
    stack: Stack, faults: FaultWatch, http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    faults.expect(*BROKER_RESTART)
    user: User = await new_user("rabbit-restart")
    outcomes: dict[str, int] = {}
    keys: list[str] = []
    post_ids: list[str] = []
    done = asyncio.Event()

    # The read side across the restart (issue 13): streams open, and a post in a warm cache.
    watcher: User = await new_user("rabbit-watch")
    watched = await create_with_retries(http, watcher, f"watched-{uuid4()}", {}, faults)
    for _ in range(2):
        async with http.get(f"/posts/{watched}") as response:
            assert response.status == 200
    read_side = live_streams(http, "/live", 3)
    streams = await read_side.__aenter__()

    async def client() -> None:
        """One client writing posts back to back, through the outage and after it."""
        while not done.is_set():
            key = f"rabbit-{uuid4()}"
            keys.append(key)
            post_ids.append(await create_with_retries(http, user, key, outcomes, faults))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(1)
    # Commands straight onto the broker as it goes down: persistent messages in quorum queues.
    direct_ids = [str(uuid4()) for _ in range(100)]
    for message_id in direct_ids:
        await broker.command("create-post", {"title": message_id, "body": "b"}, token=user.token, message_id=message_id, reply=False)
    await asyncio.to_thread(run, *rabbitmqctl("stop_app"))
    stopped = time.monotonic()
    try:
        # A change no event will ever announce (the broker is away): only dropping the cache
        # when the feed was lost keeps the gateway from serving the old title afterwards.
        await db.execute("UPDATE posts.posts SET title = 'changed while the broker was away' WHERE id = $1::uuid", watched)
        await asyncio.sleep(3)
        async with http.get("/posts") as response:
            faults.saw(response.status, "GET /posts")
            outage_status = response.status
            retry_after = response.headers.get("Retry-After")
    finally:
        await asyncio.to_thread(run, *rabbitmqctl("start_app"))
    await asyncio.sleep(2)
    done.set()
    await asyncio.gather(*clients)
    assert outage_status == 503 and retry_after, "the gateway must answer 503 with Retry-After while the broker is down"
    assert outcomes.get("503", 0) > 0, f"the load did not run through the outage: {outcomes}"

    expected = len(keys) + len(direct_ids)
    deadline = time.monotonic() + 30
    while await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) < expected:
        assert time.monotonic() < deadline, "commands accepted before the restart were lost"
        await asyncio.sleep(0.3)
    titles = [r["title"] for r in await db.fetch("SELECT title FROM posts.posts WHERE author_id = $1", user.id)]
    print(
        f"\nrabbitmq restart: {len(keys)} HTTP creates by 8 clients + {len(direct_ids)} direct commands; "
        f"responses {outcomes}; posts {len(titles)}; distinct {len(set(titles))}"
    )
    assert sorted(titles) == sorted(keys + direct_ids), "every command must take effect exactly once"
    assert len(set(post_ids)) == len(keys)
    await stack.wait_ready("gateway", timeout=30)

    try:
        async with http.get(f"/posts/{watched}") as response:
            assert response.status == 200 and (await response.json())["title"] == "changed while the broker was away"
        # Every open stream was told to reload (events may have been lost), and hears what follows.
        deadline = time.monotonic() + 15
        while not all(any(m.event == "reload" and m.arrived > stopped for m in stream.messages) for stream in streams):
            assert time.monotonic() < deadline, "an open /live stream was not told to reload after the broker came back"
            await asyncio.sleep(0.1)
        after = await create_with_retries(http, watcher, f"after-{uuid4()}", {}, faults)
        while not all(stream.find("post.created", post_id=after) for stream in streams):
            assert time.monotonic() < deadline, "an open /live stream missed an event after the restart"
            await asyncio.sleep(0.1)
    finally:
        await read_side.__aexit__(None, None, None)


def postgresql_cluster_to_restart() -> tuple[str, str] | None:
    """(version, name) of the PostgreSQL cluster this run may restart: the local `main` when no
    TEST_* URL is set (CI), or the one PGCLUSTER names (`15/faults`) when TEST_DATABASE_URL is on
    loopback at that cluster's port (pg_lsclusters); None otherwise."""
    if not (shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir()):
        return None
    if LOCAL:
        return sorted(p.name for p in Path("/etc/postgresql").iterdir())[0], "main"
    url = urllib.parse.urlsplit(os.environ.get("TEST_DATABASE_URL", ""))
    version, _, name = os.environ.get("PGCLUSTER", "").partition("/")
    if not name or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for row in listing.splitlines():
        fields = row.split()
        if fields[:3] == [version, name, str(url.port or 5432)]:
            return version, name
    return None


CLUSTER = postgresql_cluster_to_restart()


@pytest.mark.skipif(CLUSTER is None, reason="needs pg_ctlcluster and a local PostgreSQL cluster it may restart")
async def test_postgresql_restart_under_load(stack: Stack, faults: FaultWatch, broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    assert CLUSTER is not None
    version, cluster = CLUSTER
    faults.expect(*DATABASE_RESTART)
    user: User = await new_user("pg-restart")
    message_ids = [str(uuid4()) for _ in range(200)]

    async def send(message_id: str) -> dict:
        for _ in range(3):  # a reply lost with a connection is retried with the same message_id
            try:
                reply = await broker.command(
                    "create-post", {"title": message_id, "body": "b"}, token=user.token, message_id=message_id, timeout=60
                )
                assert reply is not None
                return reply
            except TimeoutError:
                continue
        raise AssertionError(f"{message_id} got no reply")

    load = asyncio.gather(*(send(m) for m in message_ids))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(run, "pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart")
    replies = await load
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
    titles = [r["title"] for r in await db.fetch("SELECT title FROM posts.posts WHERE author_id = $1", user.id)]
    print(f"\npostgresql restart: {len(message_ids)} commands; posts {len(titles)}; distinct {len(set(titles))}")
    assert sorted(titles) == sorted(message_ids)
    await stack.wait_ready("gateway", timeout=30)
