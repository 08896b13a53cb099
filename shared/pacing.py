"""How the long-running loops wait: backoff between failed attempts, and waits a signal cuts short.

Two kinds of loop run for the life of a process. One keeps trying to reach something that is away
(the database at start-up, the broker from the gateway, a command held through an outage) and
must neither spin nor wait long once it is back: it sleeps the delays of a `Backoff`. The other
does some work every few seconds until the process stops (purging, refreshing gauges, polling the
outbox) and must stop at once rather than at the end of its pause: it waits with
`wait_for_event`, or loops with `every`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator


class Backoff(Iterator[float]):
    """Delays between attempts: `first`, then doubling, never over `cap` seconds.

    An endless iterator: `delay = next(backoff)` after each failure.
    """

    def __init__(self, first: float = 0.5, *, cap: float = 5.0, factor: float = 2.0) -> None:
        if first <= 0 or cap < first or factor < 1:
            raise ValueError("a backoff needs 0 < first <= cap and factor >= 1")
        self._cap, self._factor = cap, factor
        self._next = first

    def __next__(self) -> float:
        delay = self._next
        self._next = min(delay * self._factor, self._cap)
        return delay


async def wait_for_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, for at most `seconds`; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def every(seconds: float, stop: asyncio.Event) -> AsyncIterator[None]:
    """Yield at once, then every `seconds` until `stop` is set (checked before each turn, and
    ending the pause the moment it is set)."""
    while not stop.is_set():
        yield
        if await wait_for_event(stop, seconds):
            return
