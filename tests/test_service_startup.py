"""A service whose start-up fails part-way leaves nothing open (shared/service.py `serve`).

`serve` runs here in the test's own process, under a made-up service name, so the connections its
pools open can be told apart in pg_stat_activity by their application_name.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from shared import service
from shared.settings import Settings
from shared.topology import TopologyError
from tests.support.backends import Backends
from tests.support.stack import free_port

WaitUntil = Callable[..., Awaitable[Any]]


@pytest.fixture
def name() -> str:
    return f"startup_{uuid4().hex[:8]}"


@pytest.fixture
def settings(backends: Backends) -> Settings:
    return Settings.from_env({"DATABASE_URL": backends.database_url, "AMQP_URL": backends.amqp_url})


@pytest.fixture
async def admin_db(backends: Backends) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(backends.database_url)
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
async def no_signal_handlers() -> AsyncIterator[None]:
    """`serve` takes over SIGTERM and SIGINT for its stop event; give them back to pytest."""
    yield
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


async def connections_of(conn: asyncpg.Connection, name: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", f"{name}_service"))


async def test_a_wire_that_fails_leaves_no_pool_open(
    name: str, settings: Settings, admin_db: asyncpg.Connection, tmp_path: Path, wait_until: WaitUntil
) -> None:
    seen: list[int] = []

    async def wire(_settings: Settings, pool: asyncpg.Pool) -> service.Wiring:
        seen.append(await connections_of(admin_db, name))
        raise RuntimeError("wiring failed")

    with pytest.raises(RuntimeError, match="wiring failed"):
        await service.serve(name, tmp_path, wire, settings)
    assert seen and seen[0] >= 2, "both pools were open when wire ran"
    await wait_until(lambda: _none_left(admin_db, name), timeout=5)


async def test_a_queue_declaration_that_fails_closes_the_broker_connection_and_the_pools(
    name: str,
    settings: Settings,
    admin_db: asyncpg.Connection,
    tmp_path: Path,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channels: list[AbstractChannel] = []

    async def wire(_settings: Settings, _pool: asyncpg.Pool) -> service.Wiring:
        return service.Wiring(commands=[], events=[], http_port=free_port())

    async def missing_queues(channel: AbstractChannel, _service: str, _mode: str) -> Any:
        channels.append(channel)
        raise TopologyError("no queues for this service")

    # The made-up service has no routes in the topology: let its wiring pass, fail its queues.
    monkeypatch.setattr(service, "check_wiring", lambda *_: None)
    monkeypatch.setattr(service, "open_service_queues", missing_queues)
    with pytest.raises(TopologyError):
        await service.serve(name, tmp_path, wire, settings)
    assert channels and channels[0].is_closed
    await wait_until(lambda: _none_left(admin_db, name), timeout=5)


async def _none_left(conn: asyncpg.Connection, name: str) -> bool:
    return await connections_of(conn, name) == 0
