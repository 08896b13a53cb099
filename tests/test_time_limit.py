"""The time limit tests/conftest.py puts on every async test: a test that hangs fails, with its
`finally` blocks run, rather than holding up the suite (once a hang took all of CI's budget)."""

from __future__ import annotations

import asyncio

import pytest

from tests import conftest

pytestmark = pytest.mark.unit


async def test_a_test_past_its_limit_is_cancelled_where_it_waits_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "TEST_LIMIT_SECONDS", 0.2)
    cleaned_up = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    with pytest.raises(TimeoutError, match="ran past its limit of 0.2 s") as raised:
        await conftest._bounded(hangs)()
    assert cleaned_up.is_set()
    assert isinstance(raised.value.__cause__, TimeoutError)  # asyncio's, itself from the cancellation where it waited


async def test_a_timeout_of_the_test_s_own_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    async def times_out() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError) as raised:
        await conftest._bounded(times_out)()
    assert "limit" not in str(raised.value)


async def test_every_async_test_of_the_suite_is_bounded(request: pytest.FixtureRequest) -> None:
    assert getattr(request.node.obj, "__wrapped__", None) is not None
