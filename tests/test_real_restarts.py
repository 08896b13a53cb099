"""The machine's real RabbitMQ and PostgreSQL restarted under load: nothing accepted is lost and
nothing happens twice. These stop shared services, so they run only against local ones (CI runs
its tests one at a time); with TEST_AMQP_URL / TEST_DATABASE_URL elsewhere they are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack

pytestmark = pytest.mark.fault

LOCAL = not os.environ.get("TEST_AMQP_URL") and not os.environ.get("TEST_DATABASE_URL")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


async def create_with_retries(http: aiohttp.ClientSession, user: User, key: str, outcomes: dict[str, int]) -> str:
    """What a well-behaved client does: retry 503/504 with the same Idempotency-Key until it lands."""
    headers = {**user.auth, "Idempotency-Key": key}
    deadline = time.monotonic() + 90
    while True:
        try:
            async with http.post("/posts", json={"title": key, "body": "b"}, headers=headers) as response:
                outcomes[str(response.status)] = outcomes.get(str(response.status), 0) + 1
                if response.status == 201:
                    return str((await response.json())["id"])
                assert response.status in (503, 504), await response.text()
        except aiohttp.ClientError:
            outcomes["connection error"] = outcomes.get("connection error", 0) + 1
        assert time.monotonic() < deadline, f"{key} never landed: {outcomes}"
        await asyncio.sleep(0.3)


@pytest.mark.skipif(not (LOCAL and shutil.which("rabbitmqctl")), reason="needs the local RabbitMQ and rabbitmqctl")
async def test_rabbitmq_restart_under_load(
    stack: Stack, http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    user: User = await new_user("rabbit-restart")
    outcomes: dict[str, int] = {}
    keys: list[str] = []
    post_ids: list[str] = []
    done = asyncio.Event()

    async def client() -> None:
        """One client writing posts back to back, through the outage and after it."""
        while not done.is_set():
            key = f"rabbit-{uuid4()}"
            keys.append(key)
            post_ids.append(await create_with_retries(http, user, key, outcomes))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(1)
    # Commands straight onto the broker as it goes down: persistent messages in quorum queues.
    direct_ids = [str(uuid4()) for _ in range(100)]
    for message_id in direct_ids:
        await broker.command("create-post", {"title": message_id, "body": "b"}, token=user.token, message_id=message_id, reply=False)
    await asyncio.to_thread(run, "rabbitmqctl", "stop_app")
    try:
        await asyncio.sleep(3)
        async with http.get("/posts") as response:
            outage_status = response.status
            retry_after = response.headers.get("Retry-After")
    finally:
        await asyncio.to_thread(run, "rabbitmqctl", "start_app")
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


@pytest.mark.skipif(
    not (LOCAL and shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir()),
    reason="needs the local PostgreSQL cluster and pg_ctlcluster",
)
async def test_postgresql_restart_under_load(stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    user: User = await new_user("pg-restart")
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
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
    await asyncio.to_thread(run, "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
    replies = await load
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
    titles = [r["title"] for r in await db.fetch("SELECT title FROM posts.posts WHERE author_id = $1", user.id)]
    print(f"\npostgresql restart: {len(message_ids)} commands; posts {len(titles)}; distinct {len(set(titles))}")
    assert sorted(titles) == sorted(message_ids)
    await stack.wait_ready("gateway", timeout=30)
