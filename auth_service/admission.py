"""Who gets the password-hashing threads next, and who is told at once to come back later.

An Argon2id hash takes a core for a fifth of a second and 64 MiB, and auth_service has
`HASH_THREADS` threads for it (auth_service/passwords.py). First come, first served, a flood of
registrations queued in front of a login made a person with the right password wait 10 s for a 504.
So each kind of hashing has a lane:

- a login (a verify) always goes before a waiting registration (the hash of a new password), and
  registrations may hold at most all threads but one, so a login never waits for a registration's
  hash to finish;
- each lane holds only a few callers (running, waiting, or making their checks before the hash),
  and each waits for a thread a bounded time; past either bound the caller is refused with a 503
  and `Retry-After` (at once when the lane is full), instead of a 504 when the gateway gives up.
  A waiting caller holds a database connection (its command's transaction is open), so these
  bounds also keep the pool free for everything else.

The threads themselves still bound how many hashes run (the executor has `HASH_THREADS` workers);
this decides only the order, and who is turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from auth_service.passwords import HASH_THREADS
from shared.errors import ServiceUnavailable

T = TypeVar("T")

#: What a refused caller is told to wait: a hash takes a fraction of a second, so the queue that
#: turned it away has moved on by then.
RETRY_AFTER_SECONDS = 1


class Lane(IntEnum):
    """A kind of hashing; a lower value goes first."""

    LOGIN = 0
    REGISTRATION = 1


@dataclass(frozen=True, slots=True)
class LaneBounds:
    """How much of the hashing threads one lane may hold and queue for."""

    threads: int  # hashes of this lane that may run at once
    waiting: int  # callers it may hold beyond `threads` (waiting, or making their checks); the next is refused at once
    wait_seconds: float  # how long one caller may wait before it is refused
    busy_detail: str  # what a refused caller is told


class HashAdmission:
    """Hands out `threads` hashing slots by lane priority, within each lane's bounds.

    A caller first takes a place in its lane (`place`), refused at once when the lane already has
    as many callers as it has threads and waiting room; then, after whatever cheap checks it has
    to make, waits its turn for a thread (`Place.run`). Taking the place first means a flood is
    turned away before it spends anything (a database round trip, a rate-limit slot)."""

    def __init__(self, threads: int, lanes: Mapping[Lane, LaneBounds]) -> None:
        if set(lanes) != set(Lane):
            raise ValueError("every lane needs its bounds")
        self._free = threads
        self._lanes = dict(lanes)
        self._placed = dict.fromkeys(Lane, 0)
        self._running = dict.fromkeys(Lane, 0)
        self._waiting: dict[Lane, deque[asyncio.Future[None]]] = {lane: deque() for lane in Lane}

    def running(self, lane: Lane) -> int:
        return self._running[lane]

    def waiting(self, lane: Lane) -> int:
        return len(self._waiting[lane])

    def placed(self, lane: Lane) -> int:
        """Callers holding a place in `lane`: running, waiting, or still making their checks."""
        return self._placed[lane]

    def busy(self, lane: Lane) -> ServiceUnavailable:
        return ServiceUnavailable(self._lanes[lane].busy_detail, retry_after=RETRY_AFTER_SECONDS)

    @contextlib.contextmanager
    def place(self, lane: Lane) -> Iterator[Place]:
        """A place in `lane` for the block's duration; 503 at once when the lane is full."""
        bounds = self._lanes[lane]
        if self._placed[lane] >= bounds.threads + bounds.waiting:
            raise self.busy(lane)
        self._placed[lane] += 1
        try:
            yield Place(self, lane)
        finally:
            self._placed[lane] -= 1

    async def run(self, lane: Lane, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` in `lane`, with no checks of its own to make first."""
        with self.place(lane) as place:
            return await place.run(work)

    def _can_start(self, lane: Lane) -> bool:
        if self._free == 0 or self._running[lane] >= self._lanes[lane].threads:
            return False
        # Nobody of this lane or a more urgent one is waiting ahead of it.
        return not any(self._waiting[other] for other in Lane if other <= lane)

    async def _acquire(self, lane: Lane) -> None:
        if self._can_start(lane):
            self._take(lane)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(turn)
        try:
            # Shielded: a timeout must not cancel a turn that `_dispatch` has just granted.
            await asyncio.wait_for(asyncio.shield(turn), self._lanes[lane].wait_seconds)
        except TimeoutError:
            if turn.done():  # granted in the same instant: take it after all
                return
            self._give_up(lane, turn)
            raise self.busy(lane) from None
        except asyncio.CancelledError:
            if turn.done():
                self._release(lane)  # granted, but the caller is gone: pass the slot on
            else:
                self._give_up(lane, turn)
            raise

    def _give_up(self, lane: Lane, turn: asyncio.Future[None]) -> None:
        turn.cancel()
        self._waiting[lane].remove(turn)

    def _take(self, lane: Lane) -> None:
        self._free -= 1
        self._running[lane] += 1

    def _release(self, lane: Lane) -> None:
        self._free += 1
        self._running[lane] -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant free slots to waiting callers, most urgent lane first."""
        for lane in Lane:
            queue = self._waiting[lane]
            while queue and self._free and self._running[lane] < self._lanes[lane].threads:
                turn = queue.popleft()
                self._take(lane)
                turn.set_result(None)


@dataclass(frozen=True, slots=True)
class Place:
    """A caller's place in a lane: its hash runs when its turn comes."""

    admission: HashAdmission
    lane: Lane

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` once a thread is this caller's; 503 when that takes longer than the lane allows."""
        await self.admission._acquire(self.lane)
        try:
            return await work()
        finally:
            self.admission._release(self.lane)


#: The lanes of auth_service's hashing threads. Logins may use every thread, with 4 more waiting
#: (about half a second of hashing) before the next is refused. Registrations keep one thread free
#: for logins, with 2 more waiting.
PASSWORD_LANES: Mapping[Lane, LaneBounds] = {
    Lane.LOGIN: LaneBounds(
        threads=HASH_THREADS,
        waiting=4,
        wait_seconds=2.0,
        busy_detail="Sign-in is busy right now; try again in a moment",
    ),
    Lane.REGISTRATION: LaneBounds(
        threads=max(1, HASH_THREADS - 1),
        waiting=2,
        wait_seconds=2.0,
        busy_detail="Registration is busy right now; try again in a moment",
    ),
}


def password_admission() -> HashAdmission:
    """The admission in front of auth_service's hashing threads."""
    return HashAdmission(HASH_THREADS, PASSWORD_LANES)
