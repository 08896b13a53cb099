"""Fixtures shared by the integration tests: real PostgreSQL, real RabbitMQ, real processes.

One stack runs for the whole session (starting four processes per test would make the suite
slow without testing anything more); each test makes its own users, so tests do not depend on
each other's data.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import to_pem
from tests.support.accounts import User, make_admin, register
from tests.support.backends import Backends, provisioned
from tests.support.broker import BrokerProbe
from tests.support.faults import FaultWatch
from tests.support.forge import TokenForge
from tests.support.stack import Stack, stack_env, start_stack

T = TypeVar("T")


@pytest.fixture(scope="session")
async def backends() -> AsyncIterator[Backends]:
    async with provisioned() as provided:
        yield provided


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
async def stack(backends: Backends, signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    run_dir: Path = tmp_path_factory.mktemp("stack")
    key_file = run_dir / "signing-key.pem"
    key_file.write_text(to_pem(signing_key))
    running = await start_stack(stack_env(backends.database_url, backends.amqp_url, key_file, backends.broker_users), run_dir)
    try:
        # TEST_REPLICAS=2: every service and the gateway twice, as production scales out (issue 14).
        await running.start_replicas(int(os.environ.get("TEST_REPLICAS", "1")))
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="session")
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.gateway_url) as session:
        yield session


@pytest.fixture(scope="session")
async def db(backends: Backends, stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    """The run's database, for checking what a command did or did not change (schema-qualified SQL)."""
    pool = await asyncpg.create_pool(backends.database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def broker(backends: Backends, stack: Stack) -> AsyncIterator[BrokerProbe]:
    connection = await aio_pika.connect_robust(backends.amqp_url, reconnect_interval=1)
    probe = BrokerProbe(connection, backends.amqp_url, backends.broker_users.urls)
    await probe.start()
    yield probe
    await probe.close()
    await connection.close()


@pytest.fixture
def faults(stack: Stack) -> Iterator[FaultWatch]:
    """For fault tests: fails the test on any 500 a client saw and on any ERROR line in any
    process's log that the fault does not explain (tests/support/faults.py)."""
    watch = FaultWatch(stack.log_dir)
    yield watch
    watch.check()


@pytest.fixture(scope="session")
def forge(signing_key: Ed25519PrivateKey) -> TokenForge:
    return TokenForge(signing_key, issuer="auth_service", audience="posts-platform")


@pytest.fixture
def new_user(http: aiohttp.ClientSession) -> Callable[..., Awaitable[User]]:
    async def make(name: str = "user") -> User:
        return await register(http, name)

    return make


@pytest.fixture(scope="module")
async def admin(http: aiohttp.ClientSession, stack: Stack) -> User:
    """An admin for the module's tests to act with."""
    return await make_admin(http, stack)


@pytest.fixture(scope="module")
async def plain_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client with no base URL, for a service's own HTTP port (its /metrics)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def new_admin(http: aiohttp.ClientSession, stack: Stack) -> Callable[[], Awaitable[User]]:
    async def make() -> User:
        return await make_admin(http, stack)

    return make


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 1.0, interval: float = 0.05) -> T:
    """Poll `check` until it returns a truthy value; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            assert value, f"condition not met within {timeout} s (last value: {value!r})"
            return value
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Awaitable[Any]]:
    return eventually


# -- figures of the fault tests ---------------------------------------------------------------
# The fault tests print what they sent and saw (commands, effects, events, duplicates suppressed).
# Their output is kept here and shown at the end of every run, CI's included, pass or fail.

_FIGURES: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "fault" in report.keywords and report.capstdout.strip():
        _FIGURES.append((report.nodeid, report.capstdout.strip()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("fault test figures")
        for nodeid, text in _FIGURES:
            terminalreporter.write_line(f"{nodeid}:")
            for line in text.splitlines():
                terminalreporter.write_line(f"    {line}")


# -- a time limit on every async test ------------------------------------------------------------
# A test that hangs must fail, not hold up the suite: CI has a budget, and once a hang in the
# cluster failover test (a load that never recovered, and clients retrying for ever) took all of
# it. Past the limit the test's coroutine is cancelled where it waits, so its `finally` blocks run
# (clusters and stacks are stopped) and the traceback names the await that hung.

#: The longest an async test may run; the slowest (the fault and failover tests) take about two minutes.
TEST_LIMIT_SECONDS = 600.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj)


def _bounded(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        limit = asyncio.timeout(TEST_LIMIT_SECONDS)
        try:
            async with limit:
                return await test(*args, **kwargs)
        except TimeoutError as exc:
            if limit.expired():
                raise TimeoutError(f"the test ran past its limit of {TEST_LIMIT_SECONDS:g} s (it was waiting where shown above)") from exc
            raise

    return bounded
