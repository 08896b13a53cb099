"""The stack under test: started by the harness on a fresh database and vhost, or already running.

Like the test suite, a started stack gets its own PostgreSQL database and RabbitMQ vhost (named
`zt_bench_<id>`, dropped afterwards), random ports and a freshly generated signing key, so it
never sees another stack on the machine. A running stack is described by its URLs and, where
known, its pids (`--pid gateway=1234`) for CPU and memory figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import to_pem
from tests.support import stack as launcher
from tests.support.broker_users import BrokerUsers, provision_broker_users

#: How long the services may take to answer /readyz: a loaded machine starts them slowly.
READY_SECONDS = 90.0


@dataclass
class Stack:
    gateway_url: str
    amqp_url: str
    database_name: str | None
    pids: dict[str, int] = field(default_factory=dict)
    #: The service processes, when this run started them; `stop()` ends them.
    services: launcher.Stack | None = None

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop_all()


def with_path(url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


class Backends:
    """This run's database and vhost on the given servers; `drop()` removes both."""

    def __init__(self, admin_database_url: str, admin_amqp_url: str) -> None:
        self.name = f"zt_bench_{uuid4().hex[:10]}"
        self._admin_database_url, self._admin_amqp_url = admin_database_url, admin_amqp_url
        self.database_url = with_path(admin_database_url, "/" + self.name)
        self.amqp_url = with_path(admin_amqp_url, "/" + self.name)
        self.broker_users: BrokerUsers | None = None
        self._delete_users: Callable[[], None] | None = None

    async def create(self) -> None:
        if shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmqctl is needed to create a vhost; or pass --gateway-url for a running stack")
        conn = await asyncpg.connect(self._admin_database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        user = urllib.parse.unquote(urllib.parse.urlsplit(self._admin_amqp_url).username or "guest")
        for args in (["add_vhost", self.name], ["set_permissions", "-p", self.name, user, ".*", ".*", ".*"]):
            await asyncio.to_thread(subprocess.run, ["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)
        # A user per process, as production runs (each publishes with its own user_id).
        self.broker_users, self._delete_users = await provision_broker_users(self.amqp_url)

    async def drop(self) -> None:
        if self._delete_users is not None:
            await asyncio.to_thread(self._delete_users)
        await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "delete_vhost", self.name], check=False, capture_output=True, timeout=120)
        conn = await asyncpg.connect(self._admin_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


#: The services `--replicas` multiplies, with the variable that gives each process its HTTP port.
REPLICATED = {"auth": "AUTH_HTTP_PORT", "users": "USERS_HTTP_PORT", "posts": "POSTS_HTTP_PORT"}


async def start_stack(backends: Backends, run_dir: Path, *, replicas: int = 1) -> Stack:
    """The four services as production runs them (default settings but one), ready to serve; their logs
    are `<run_dir>/<service>.log`. With `replicas` > 1, each service runs that many processes on
    its queues (`posts-2`, ...: the competing consumers production scales out with), the gateway one."""
    key_file = run_dir / "signing-key.pem"
    key_file.write_text(to_pem(Ed25519PrivateKey.generate()))
    assert backends.broker_users is not None, "create() the backends first"
    env = launcher.service_env(backends.database_url, backends.amqp_url, key_file, os.environ, backends.broker_users)
    # The one setting that is not production's: every author is registered from 127.0.0.1, and
    # `--users` may ask for more than the per-address registration limit allows in an hour.
    env.setdefault("REGISTER_MAX_PER_ADDRESS", "100000")
    if replicas > 1:
        # Each replica's command pool comes out of PostgreSQL's max_connections (100 by default).
        env.setdefault("DATABASE_POOL_SIZE", str(max(4, 10 // replicas)))
    services = await launcher.start_stack(env, run_dir, timeout=READY_SECONDS)
    try:
        for number in range(2, replicas + 1):
            for service, port_variable in REPLICATED.items():
                port = launcher.free_port()
                services.start_replica(service, f"{service}-{number}", {port_variable: str(port)})
                await services.wait_ready_at(f"http://127.0.0.1:{port}/readyz", READY_SECONDS, f"{service}-{number}")
    except BaseException:
        services.stop_all()
        raise
    return Stack(services.gateway_url, backends.amqp_url, backends.name, services.pids, services)
