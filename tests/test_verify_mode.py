"""The real processes run with BROKER_TOPOLOGY=verify as their own least-privilege broker users.

A throwaway vhost is provisioned by `scripts/broker-permissions` (the topology declared by an admin,
then the users with verify mode's grants: no configure, no read on any exchange). posts_service and
the gateway are started on it as processes, each with its own user's AMQP_URL and a database of
their own; the session stack's auth_service signs the tokens. A post is created and read back
through that gateway, and its event reaches `events`. A service started in verify mode on a vhost
without the topology stops at once and says why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest

from shared.declarations import PROCESSES
from tests.support.accounts import User
from tests.support.backends import Backends
from tests.support.stack import ROOT, Stack, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="rabbitmqctl is not on PATH: the test provisions a vhost and users with it"
)

BROKER = "127.0.0.1:5672"
USERS = ("gateway", "auth_service", "users_service", "posts_service")


def rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rabbitmqctl {args[0]} failed: {result.stderr or result.stdout}"


class Broker:
    """A throwaway vhost with prefixed users; `url(user)` connects as one of them."""

    def __init__(self) -> None:
        run = uuid4().hex[:10]
        self.vhost, self.prefix = f"zt_verify_{run}", f"zt_verify_{run}_"
        self.passwords = {user: f"pw-{uuid4().hex}" for user in (*USERS, "admin")}

    def url(self, user: str) -> str:
        return f"amqp://{self.prefix}{user}:{self.passwords[user]}@{BROKER}/{self.vhost}"

    def env(self) -> dict[str, str]:
        """BROKER_USER_*: the processes' users here are the prefixed ones."""
        return {p.broker_user_variable: self.prefix + p.default_broker_user for p in PROCESSES}

    def provision(self) -> None:
        """scripts/broker-permissions, exactly as an operator runs it, with an admin of our own."""
        rabbitmqctl("add_user", f"{self.prefix}admin", stdin=self.passwords["admin"])
        env = {**os.environ, "BROKER_USER_PREFIX": self.prefix, "ADMIN_AMQP_URL": self.url("admin")}
        env.update({f"{user.upper()}_AMQP_PASSWORD": self.passwords[user] for user in USERS})
        result = subprocess.run(
            [str(ROOT / "scripts" / "broker-permissions"), self.vhost], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"scripts/broker-permissions failed:\n{result.stdout}\n{result.stderr}"

    def remove(self) -> None:
        subprocess.run(["rabbitmqctl", "delete_vhost", self.vhost], capture_output=True, timeout=60)
        for user in self.passwords:
            subprocess.run(["rabbitmqctl", "delete_user", self.prefix + user], capture_output=True, timeout=60)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    made = Broker()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
async def database_url(backends: Backends) -> AsyncIterator[str]:
    """A database of their own, so no other posts_service's outbox relay publishes their events."""
    name = f"zt_verify_{uuid4().hex[:10]}"
    admin = await asyncpg.connect(backends.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(backends.database_url)._replace(path="/" + name))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Processes:
    """Processes started with their own environment; logs kept for the failure message."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, package: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{package}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        self.running[package] = subprocess.Popen([sys.executable, "-m", package], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self.running[package]

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in sorted(self.log_dir.glob("*.log")))

    async def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 20)
        for log in self._logs:
            log.close()


async def until(check: Callable[[], Any], processes: Processes, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for name, process in processes.running.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}\n{processes.logs()}"
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {timeout} s\n{processes.logs()}")


async def test_posts_service_and_gateway_work_in_verify_mode_as_their_own_users(
    stack: Stack, broker: Broker, database_url: str, new_user: Callable[..., Any], tmp_path: Path
) -> None:
    broker.provision()
    posts_port, gateway_port = free_port(), free_port()
    common = {**stack.env, **broker.env(), "BROKER_TOPOLOGY": "verify", "DATABASE_URL": database_url}
    processes = Processes(tmp_path)
    admin = await aio_pika.connect(broker.url("admin"))
    try:
        seen = await (await admin.channel()).declare_queue(exclusive=True)
        await seen.bind("events", routing_key="post.created")
        processes.start("posts_service", {**common, "AMQP_URL": broker.url("posts_service"), "POSTS_HTTP_PORT": str(posts_port)})
        processes.start("gateway", {**common, "AMQP_URL": broker.url("gateway"), "GATEWAY_PORT": str(gateway_port)})
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{gateway_port}") as http:

            async def posts_ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{posts_port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            async def gateway_reaches_posts() -> bool:
                """Only posts_service runs on this vhost, so readiness may fail only for the other two."""
                try:
                    async with http.get("/readyz") as response:
                        body = await response.json(content_type=None)
                except aiohttp.ClientError:
                    return False
                return response.status == 200 or set(body.get("checks", {"broker": ""})) <= {"auth_service", "users_service"}

            await until(posts_ready, processes, "posts_service was not ready")
            await until(gateway_reaches_posts, processes, "the gateway did not reach posts_service")

            alice: User = await new_user("verify")  # registered through the session stack: auth signs her token
            async with http.post("/posts", json={"title": "Least", "body": "privilege"}, headers=alice.auth) as response:
                assert response.status == 201, f"{response.status} {await response.text()}\n{processes.logs()}"
                post = await response.json()
            assert post["author_id"] == alice.id
            async with http.get(f"/posts/{post['id']}") as response:
                assert response.status == 200
                assert await response.json() == post

        async def event_arrived() -> bool:
            message = await seen.get(no_ack=True, fail=False)
            return message is not None and post["id"] in message.body.decode()

        await until(event_arrived, processes, "post.created never reached the events exchange", timeout=10)
    finally:
        await admin.close()
        await processes.stop_all()


async def test_a_service_in_verify_mode_stops_when_the_topology_is_missing(stack: Stack, broker: Broker, tmp_path: Path) -> None:
    rabbitmqctl("add_vhost", broker.vhost)
    user = f"{broker.prefix}posts_service"
    rabbitmqctl("add_user", user, stdin=broker.passwords["posts_service"])
    rabbitmqctl("set_permissions", "-p", broker.vhost, user, "^$", "^(amq\\.default|events|dead-letters)$", "^posts\\.(commands|events)$")
    processes = Processes(tmp_path)
    env = {
        **stack.env,
        **broker.env(),
        "BROKER_TOPOLOGY": "verify",
        "AMQP_URL": broker.url("posts_service"),
        "POSTS_HTTP_PORT": str(free_port()),
    }
    try:
        process = processes.start("posts_service", env)
        try:
            returncode = await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"posts_service kept running without the topology\n{processes.logs()}") from None
        assert returncode == 1, processes.logs()
        assert "python -m shared.topology declare" in processes.logs()
    finally:
        await processes.stop_all()
