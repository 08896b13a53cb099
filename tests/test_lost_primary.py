"""A write that reaches a server taking no writes is an outage, not a bug: the runner holds the
message, has its pool reconnect (so `target_session_attrs` finds the primary again) and retries.
On the read-only pool of public reads the same error is a handler writing, which stays a bug."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from tests.support.runner import bare_processor

pytestmark = pytest.mark.unit


class FakePool:
    """Enough of an asyncpg pool: connections that are no connection, and a count of expiries."""

    def __init__(self) -> None:
        self.expired = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        yield object()

    async def expire_connections(self) -> None:
        self.expired += 1


async def test_a_write_on_a_standby_is_held_and_the_pool_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.runner.asyncio.sleep", _no_wait)
    pool = FakePool()
    runner = bare_processor(pool, FakePool())
    attempts = 0

    async def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")
        return "done"

    assert await runner._hold_through_outage(attempt, "command") == "done"
    assert (attempts, pool.expired) == (3, 2)


async def test_a_public_read_that_writes_is_a_bug_not_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.runner.asyncio.sleep", _no_wait)
    pool, read_pool = FakePool(), FakePool()
    runner = bare_processor(pool, read_pool)
    calls = 0

    async def handler(_payload: Any, _caller: Any, _conn: Any) -> None:
        nonlocal calls
        calls += 1
        assert calls == 1, "retried as if the database were away"  # fails the test instead of looping
        raise asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")

    route = SimpleNamespace(name="list-posts", handler=handler)
    with pytest.raises(RuntimeError, match="tried to write"):
        await runner._hold_through_outage(lambda: runner._run_public_read(route, None, {}), "command")  # type: ignore[arg-type]
    assert pool.expired == read_pool.expired == 0


async def _no_wait(_seconds: float) -> None:
    return None
