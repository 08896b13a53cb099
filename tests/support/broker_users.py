"""A RabbitMQ user per process for a stack on a throwaway vhost, as scripts/broker-permissions makes them.

RabbitMQ users are broker-wide, so each run's users carry a prefix of their own (the script's
`BROKER_USER_PREFIX`), and the stack is told their names with `BROKER_USER_*`. The grants are
the script's (`shared.topology.grants`, verify mode's least privilege), so the services run with
`BROKER_TOPOLOGY=verify` on a topology the admin URL declared first: the whole suite exercises
what production runs. Users, permissions and topic permissions go in with one definitions import
(rabbitmqctl, or the management API when there is no local rabbitmqctl), because each rabbitmqctl
call costs seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from uuid import uuid4

import aio_pika

from shared.declarations import PROCESSES
from shared.topology import ROUTES, declare, grants
from tests.support import cli

#: The longest a connection to the broker may take to open here: a node that takes the TCP
#: connection but never answers (one paused with its minority, say) must fail the test, not hang it.
CONNECT_SECONDS = 10.0


def amqp_url_variable(process: str) -> str:
    """Where a stack's environment keeps one process's own AMQP_URL (as deploy/'s Secret names it)."""
    return f"{process.upper()}_AMQP_URL"


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def with_credentials(amqp_url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass
class BrokerUsers:
    """Each process's broker user on the vhost, and the AMQP_URL it connects with."""

    #: By process name (`gateway`, `auth`, ...): its RabbitMQ user.
    users: dict[str, str]
    #: By process name: its AMQP_URL (its own user and password, the run's vhost).
    urls: dict[str, str]

    def env(self) -> dict[str, str]:
        """`BROKER_USER_*` and each process's `<NAME>_AMQP_URL`, for a stack's environment."""
        env = {p.broker_user_variable: self.users[p.name] for p in PROCESSES}
        env.update({amqp_url_variable(p.name): self.urls[p.name] for p in PROCESSES})
        return env


def _vhost(amqp_url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path.removeprefix("/")) or "/"


def _management(amqp_url: str) -> Callable[[str, str, object], None]:
    parts = urllib.parse.urlsplit(amqp_url)
    api = f"http://{parts.hostname}:15672/api"
    auth = base64.b64encode(f"{urllib.parse.unquote(parts.username or 'guest')}:{urllib.parse.unquote(parts.password or 'guest')}".encode())

    def call(method: str, path: str, body: object) -> None:
        request = urllib.request.Request(api + path, data=json.dumps(body).encode(), method=method)
        request.add_header("Authorization", f"Basic {auth.decode()}")
        request.add_header("Content-Type", "application/json")
        urllib.request.urlopen(request, timeout=30).close()

    return call


def _local_rabbitmqctl(amqp_url: str) -> bool:
    return urllib.parse.urlsplit(amqp_url).hostname in ("127.0.0.1", "localhost", "::1") and shutil.which("rabbitmqctl") is not None


async def provision_broker_users(
    admin_amqp_url: str, *, rabbitmqctl: Sequence[str] | None = None, ctl_env: Mapping[str, str] | None = None
) -> tuple[BrokerUsers, Callable[[], None]]:
    """Declare the topology on `admin_amqp_url`'s vhost as its (admin) user, then make a user per
    process with the script's grants; returns them and a cleanup that deletes the users.
    `rabbitmqctl` (with `ctl_env`) is the command that reaches the broker's node, for a node of
    the test's own (tests/support/rabbit_cluster.py); by default the machine's."""
    vhost = _vhost(admin_amqp_url)
    prefix = f"zt_{uuid4().hex[:10]}_"
    connection = await aio_pika.connect(admin_amqp_url, timeout=CONNECT_SECONDS)
    try:
        await declare(await connection.channel(), ROUTES)
    finally:
        await connection.close()
    by_user = {grant.user: grant for grant in grants()}
    users = {p.name: prefix + p.default_broker_user for p in PROCESSES}
    passwords = {p.name: f"pw-{uuid4().hex}" for p in PROCESSES}
    definitions = {
        "users": [
            {
                "name": users[name],
                "password_hash": password_hash(passwords[name]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for name in users
        ],
        "permissions": [
            {
                "user": users[p.name],
                "vhost": vhost,
                **{k: getattr(by_user[p.default_broker_user], k) for k in ("configure", "write", "read")},
            }
            for p in PROCESSES
        ],
        "topic_permissions": [
            {
                "user": users[p.name],
                "vhost": vhost,
                "exchange": "events",
                "write": by_user[p.default_broker_user].topic_write,
                "read": by_user[p.default_broker_user].topic_read,
            }
            for p in PROCESSES
        ],
    }
    if rabbitmqctl is not None or _local_rabbitmqctl(admin_amqp_url):
        ctl = list(rabbitmqctl or ["rabbitmqctl"])
        env = dict(ctl_env) if ctl_env is not None else None
        result = await asyncio.to_thread(cli.run, [*ctl, "import_definitions"], stdin=json.dumps(definitions), timeout=120, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl import_definitions failed: {result.stderr or result.stdout}")

        def cleanup() -> None:
            # In parallel: each rabbitmqctl call starts an Erlang VM.
            running = [
                subprocess.Popen([*ctl, "delete_user", user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                for user in users.values()
            ]
            for process in running:
                process.wait(timeout=120)

    else:
        call = _management(admin_amqp_url)
        try:
            await asyncio.to_thread(call, "POST", "/definitions", definitions)
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(
                f"cannot create the processes' broker users: no local rabbitmqctl, and the management API refused ({exc})"
            ) from None

        def cleanup() -> None:
            call("POST", "/users/bulk-delete", {"users": list(users.values())})

    made = BrokerUsers(users, {name: with_credentials(admin_amqp_url, users[name], passwords[name]) for name in users})
    try:
        await _until_they_connect(made)
    except BaseException:
        cleanup()
        raise
    return made, cleanup


async def _until_they_connect(made: BrokerUsers, timeout: float = 30.0) -> None:
    """The import is asynchronous: wait until every user gets into the vhost."""
    deadline = asyncio.get_running_loop().time() + timeout
    for url in made.urls.values():
        while True:
            try:
                connection = await aio_pika.connect(url, timeout=CONNECT_SECONDS)
            except (aio_pika.exceptions.AMQPError, ConnectionError, OSError):
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the broker users were not usable within {timeout} s") from None
                await asyncio.sleep(0.2)
                continue
            await connection.close()
            break
