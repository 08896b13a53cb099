"""The pacing of long-running loops (shared/pacing.py): backoff delays, and waits a signal ends."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from shared.pacing import Backoff, every, wait_for_event


def test_backoff_doubles_up_to_its_cap() -> None:
    assert list(itertools.islice(Backoff(0.2), 8)) == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert list(itertools.islice(Backoff(0.5), 5)) == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert list(itertools.islice(Backoff(1, cap=10, factor=3), 4)) == [1, 3, 9, 10]


@pytest.mark.parametrize("settings", [{"first": 0}, {"first": -1}, {"first": 6}, {"first": 1, "factor": 0.5}], ids=str)
def test_backoff_refuses_delays_that_would_spin_or_shrink(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**settings)


async def test_wait_for_event_is_true_as_soon_as_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    started = time.monotonic()
    assert await wait_for_event(event, 10)
    assert time.monotonic() - started < 5


async def test_wait_for_event_is_false_after_the_timeout() -> None:
    started = time.monotonic()
    assert not await wait_for_event(asyncio.Event(), 0.05)
    assert time.monotonic() - started >= 0.04


async def test_every_turns_at_once_then_each_period_until_stopped() -> None:
    stop = asyncio.Event()
    turns = 0
    async for _ in every(0.02, stop):
        turns += 1
        if turns == 3:
            stop.set()
    assert turns == 3


async def test_every_never_turns_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    assert [turn async for turn in every(0.01, stop)] == []


async def test_a_stop_cuts_the_pause_short() -> None:
    stop = asyncio.Event()
    started = time.monotonic()

    async def loop() -> int:
        turns = 0
        async for _ in every(60, stop):
            turns += 1
        return turns

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    stop.set()
    assert await asyncio.wait_for(task, 5) == 1
    assert time.monotonic() - started < 5
