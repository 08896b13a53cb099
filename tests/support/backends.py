"""Where the tests' PostgreSQL and RabbitMQ come from, and a fresh database and vhost per run.

Order of preference: TEST_DATABASE_URL / TEST_AMQP_URL; the localhost defaults when something
answers there; testcontainers when neither is reachable and Docker is. Every run then creates its
own database and its own RabbitMQ vhost, so runs (and a stack a developer has running) never see
each other, and its own RabbitMQ user per process (tests/support/broker_users.py), deleted after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import uuid4

import asyncpg

from tests.support.broker_users import BrokerUsers, provision_broker_users

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Backends:
    database_url: str  # the run's own database
    amqp_url: str  # the run's own vhost
    admin_database_url: str
    #: A user per process on the run's vhost (`amqp_url`'s user is its admin: the tests' outsider).
    broker_users: BrokerUsers
    cleanups: list[Callable[[], None]] = field(default_factory=list)


def _reachable(url: str, default_port: int) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def _with_path(url: str, path: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _create_vhost(amqp_url: str, vhost: str) -> Callable[[], None] | None:
    """Create `vhost` for the URL's user, with rabbitmqctl or the management API; None if neither works."""
    parts = urllib.parse.urlsplit(amqp_url)
    user = urllib.parse.unquote(parts.username or "guest")
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if local and shutil.which("rabbitmqctl"):
        add = subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, timeout=60)
        perms = subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"], capture_output=True, timeout=60)
        if add.returncode == 0 and perms.returncode == 0:

            def delete_vhost() -> None:
                subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)

            return delete_vhost
    api = f"http://{parts.hostname}:15672/api"
    auth = b64encode(f"{user}:{urllib.parse.unquote(parts.password or 'guest')}".encode()).decode()

    def call(method: str, path: str, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(api + path, data=data, method=method)
        request.add_header("Authorization", f"Basic {auth}")
        request.add_header("Content-Type", "application/json")
        urllib.request.urlopen(request, timeout=10).close()

    try:
        call("PUT", f"/vhosts/{vhost}")
        call("PUT", f"/permissions/{vhost}/{urllib.parse.quote(user)}", {"configure": ".*", "write": ".*", "read": ".*"})
    except (urllib.error.URLError, OSError):
        return None
    return lambda: call("DELETE", f"/vhosts/{vhost}")


async def provision(database_url: str | None = None) -> Backends:
    """`database_url`: the server to create the run's database on (a primary and its standby, for
    one); by default TEST_DATABASE_URL's, else the local one's, else a container's."""
    database_url = (
        database_url or os.environ.get("TEST_DATABASE_URL") or (DEFAULT_DATABASE_URL if _reachable(DEFAULT_DATABASE_URL, 5432) else None)
    )
    amqp_url = os.environ.get("TEST_AMQP_URL") or (DEFAULT_AMQP_URL if _reachable(DEFAULT_AMQP_URL, 5672) else None)
    cleanups: list[Callable[[], None]] = []
    if (database_url is None or amqp_url is None) and _docker_available():
        if database_url is None:
            from testcontainers.postgres import PostgresContainer

            pg = PostgresContainer("postgres:15", driver=None).start()
            cleanups.append(pg.stop)
            database_url = pg.get_connection_url()
        if amqp_url is None:
            from testcontainers.rabbitmq import RabbitMqContainer

            rabbit = RabbitMqContainer("rabbitmq:3.12-management").start()
            cleanups.append(rabbit.stop)
            amqp_url = f"amqp://guest:guest@{rabbit.get_container_host_ip()}:{rabbit.get_exposed_port(5672)}/"
    if database_url is None or amqp_url is None:
        raise RuntimeError(
            "No PostgreSQL or RabbitMQ for the tests: start them on localhost, set TEST_DATABASE_URL and "
            "TEST_AMQP_URL, or make Docker available for testcontainers."
        )

    run_id = uuid4().hex[:10]
    database = f"zt_test_{run_id}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()

    async def drop_database() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    vhost = f"zt_test_{run_id}"
    delete_vhost = _create_vhost(amqp_url, vhost)
    run_amqp_url = _with_path(amqp_url, "/" + vhost) if delete_vhost else amqp_url
    if delete_vhost:
        cleanups.insert(0, delete_vhost)
    broker_users, delete_users = await provision_broker_users(run_amqp_url)
    cleanups.insert(0, delete_users)
    backends = Backends(_with_path(database_url, "/" + database), run_amqp_url, database_url, broker_users, cleanups)
    backends.drop_database = drop_database  # type: ignore[attr-defined]
    return backends


@asynccontextmanager
async def provisioned(database_url: str | None = None) -> AsyncIterator[Backends]:
    """`provision(database_url)` for the life of the block: the database dropped and the vhost,
    users and containers gone afterwards (those even when the database cannot be reached to drop)."""
    backends = await provision(database_url)
    try:
        yield backends
    finally:
        try:
            await backends.drop_database()  # type: ignore[attr-defined]
        finally:
            for cleanup in backends.cleanups:
                cleanup()
