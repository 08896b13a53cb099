"""The four services running as real processes (`python -m …`), pointed at the run's backends.

The one launcher of a local stack: the test suite and the benchmark harness (`bench/stack.py`)
both start theirs with `start_stack`, on an environment built by `service_env`. It imports
nothing of the project, so `python -m bench` can use it from the repository root.

Tests talk to the services only as clients would: HTTP to the gateway, messages on the broker,
and reads of the database to check what changed. Services can be stopped and started to test
restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import to_pem
from shared.declarations import SERVICES
from tests.support.backends import Backends
from tests.support.broker_users import BrokerUsers, amqp_url_variable

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {**{s.name: s.package for s in SERVICES}, "gateway": "gateway"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The variable that gives each process its HTTP port, so replicas get ports of their own.
HTTP_PORT_VARIABLES = {"auth": "AUTH_HTTP_PORT", "users": "USERS_HTTP_PORT", "posts": "POSTS_HTTP_PORT", "gateway": "GATEWAY_PORT"}


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: By service, the settings of each extra replica `start_replicas` added (`posts-2`: its port).
    replicas: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"

    def http_url(self, service: str) -> str:
        port = {"auth": "AUTH_HTTP_PORT", "users": "USERS_HTTP_PORT", "posts": "POSTS_HTTP_PORT", "gateway": "GATEWAY_PORT"}[service]
        return f"http://127.0.0.1:{self.env[port]}"

    def replica_urls(self, service: str) -> list[str]:
        """The HTTP addresses of `service`'s extra replicas (none unless TEST_REPLICAS asked)."""
        variable = HTTP_PORT_VARIABLES[service]
        return [f"http://127.0.0.1:{settings[variable]}" for settings in self.replicas.get(service, {}).values()]

    def env_for(self, service: str) -> dict[str, str]:
        """The environment `service` runs with: the stack's, with its own user's AMQP_URL."""
        return {**self.env, "AMQP_URL": self.env[amqp_url_variable(service)]}

    def start(self, service: str) -> None:
        """Start `service`, and its replicas if the stack has any (a restarted service comes back whole)."""
        log = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", PACKAGES[service]], cwd=ROOT, env=self.env_for(service), stdout=log, stderr=subprocess.STDOUT
        )
        for name, settings in self.replicas.get(service, {}).items():
            self.start_replica(service, name, settings)

    async def start_replicas(self, count: int, timeout: float = 60) -> None:
        """`count` processes of every service and gateway in all (TEST_REPLICAS): the extra ones
        compete for the same queues, and `stop`/`start` of a service take its replicas along."""
        for number in range(2, count + 1):
            for service, variable in HTTP_PORT_VARIABLES.items():
                name, port = f"{service}-{number}", free_port()
                # Each replica's pool comes out of PostgreSQL's max_connections.
                settings = {variable: str(port), "DATABASE_POOL_SIZE": "4"}
                self.replicas.setdefault(service, {})[name] = settings
                self.start_replica(service, name, settings)
                await self.wait_ready_at(f"http://127.0.0.1:{port}/readyz", timeout, name)

    def stop(self, service: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Stop `service` (its replicas first, with the same signal); the main process's exit code."""
        for name in self.replicas.get(service, {}):
            self._stop_one(name, sig, timeout)
        return self._stop_one(service, sig, timeout)

    def _stop_one(self, service: str, sig: int, timeout: float) -> int | None:
        process = self.processes.pop(service, None)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def start_replica(self, service: str, name: str, settings: Mapping[str, str]) -> None:
        """One more process of `service` (`name` keys it and its log), `settings` on top of its environment."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        env = {**self.env_for(service), **settings}
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", PACKAGES[service]], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    async def start_gateway(self, name: str, settings: Mapping[str, str] | None = None, timeout: float = 60) -> str:
        """Another gateway replica on this stack's broker and database, ready; returns its URL."""
        port = free_port()
        self.start_replica("gateway", name, {**(settings or {}), "GATEWAY_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        await self.wait_ready_at(url + "/readyz", timeout)
        return url

    @property
    def pids(self) -> dict[str, int]:
        return {service: process.pid for service, process in self.processes.items()}

    def stop_all(self) -> None:
        for service in list(self.processes):
            self._stop_one(service, signal.SIGTERM, 20)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An operator command, exactly as an operator types it."""
        return subprocess.run(
            [sys.executable, "-m", "auth_service", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )

    def logs(self, service: str, tail: int = 40) -> str:
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    async def wait_ready(self, service: str = "gateway", timeout: float = 60) -> None:
        await self.wait_ready_at(self.http_url(service) + "/readyz", timeout, service)

    async def wait_ready_at(self, url: str, timeout: float = 60, service: str = "gateway") -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs(name)}")
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        details = "\n".join(f"--- {name}\n{self.logs(name)}" for name in self.processes)
        raise RuntimeError(f"{service} was not ready within {timeout} s\n{details}")


def service_env(database_url: str, amqp_url: str, key_file: Path, base: Mapping[str, str], broker_users: BrokerUsers) -> dict[str, str]:
    """`base` with what the four services need to find their backends and each other: the run's
    database and vhost, fresh ports, the signing key. Everything else keeps its default.

    Each process connects as its own broker user (`Stack.env_for`: `<NAME>_AMQP_URL` becomes its
    AMQP_URL), in verify mode on the topology the admin declared; `AMQP_URL` itself stays the
    vhost's admin, for operator commands (shared.dead_letters, shared.preflight)."""
    auth_port = free_port()
    env = dict(base)
    env.update(broker_users.env())
    env.update(
        {
            "AMQP_URL": amqp_url,
            "BROKER_TOPOLOGY": "verify",
            "DATABASE_URL": database_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(free_port()),
            "AUTH_HTTP_PORT": str(auth_port),
            "USERS_HTTP_PORT": str(free_port()),
            "POSTS_HTTP_PORT": str(free_port()),
            "AUTH_JWKS_URL": f"http://127.0.0.1:{auth_port}/.well-known/jwks.json",
            "AUTH_SIGNING_KEY_FILE": str(key_file),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def stack_env(database_url: str, amqp_url: str, key_file: Path, broker_users: BrokerUsers) -> dict[str, str]:
    """The test suite's environment: no tracing, and token and login settings the tests rely on."""
    env = service_env(database_url, amqp_url, key_file, {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, broker_users)
    env.update(
        {
            "JWT_ISSUER": "auth_service",
            "JWT_AUDIENCE": "posts-platform",
            "ACCESS_TOKEN_TTL_SECONDS": "900",
            # Every test client is 127.0.0.1: the per-address limit is tested through the broker instead.
            "LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
            # The suite registers hundreds of users from 127.0.0.1 within the hour; the registration
            # limits are shown on a stack of their own (tests/test_registration_limits.py).
            "REGISTER_MAX_PER_ADDRESS": "1000000",
            "REGISTER_MAX_GLOBAL": "1000000",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


def side_stack_env(database_url: str, amqp_url: str, key_file: Path, broker_users: BrokerUsers) -> dict[str, str]:
    """`stack_env` for a module's own stack (settings of its own, beside the session's): small
    command pools, so two stacks at once stay well under PostgreSQL's default max_connections of
    100 (the session stack keeps the production size its saturation tests rely on)."""
    return {**stack_env(database_url, amqp_url, key_file, broker_users), "DATABASE_POOL_SIZE": "4"}


async def start_stack(env: dict[str, str], log_dir: Path, *, timeout: float = 60) -> Stack:
    """The four services, ready to serve; none left running if one of them fails to start."""
    stack = Stack(env, log_dir)
    try:
        # auth first: the others fetch its JWKS (they would retry, but this keeps start-up quiet).
        stack.start("auth")
        await stack.wait_ready("auth", timeout)
        for service in ("users", "posts", "gateway"):
            stack.start(service)
        await stack.wait_ready("gateway", timeout)
    except BaseException:
        stack.stop_all()
        raise
    return stack


@asynccontextmanager
async def side_stack(
    backends: Backends, run_dir: Path, settings: Mapping[str, str], signing_key: Ed25519PrivateKey | None
) -> AsyncIterator[Stack]:
    """A module's own stack on `backends` (`side_stack_env` with `settings` on top), stopped after
    the block. `signing_key` is written to the key file; None runs auth_service on its key ring
    in the database instead."""
    key_file = run_dir / "signing-key.pem"
    env = side_stack_env(backends.database_url, backends.amqp_url, key_file, backends.broker_users)
    if signing_key is None:
        del env["AUTH_SIGNING_KEY_FILE"]
    else:
        key_file.write_text(to_pem(signing_key))
    env.update(settings)
    running = await start_stack(env, run_dir)
    try:
        yield running
    finally:
        running.stop_all()
