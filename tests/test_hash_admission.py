"""The admission in front of the hashing threads: logins first, registrations bounded, 503 when full.

Pure asyncio: each "hash" is an event the test sets, so the order and the bounds are exact.
"""

from __future__ import annotations

import asyncio

import pytest

from auth_service import passwords
from auth_service.admission import PASSWORD_LANES, HashAdmission, Lane, LaneBounds, password_admission
from shared.errors import ServiceUnavailable

pytestmark = pytest.mark.unit


def admission(*, threads: int = 2, login_waiting: int = 2, registration_waiting: int = 2, wait: float = 5.0) -> HashAdmission:
    return HashAdmission(
        threads,
        {
            Lane.LOGIN: LaneBounds(threads=threads, waiting=login_waiting, wait_seconds=wait, busy_detail="Sign-in is busy"),
            Lane.REGISTRATION: LaneBounds(
                threads=threads - 1, waiting=registration_waiting, wait_seconds=wait, busy_detail="Registration is busy"
            ),
        },
    )


class Hashes:
    """Stand-ins for hashes: each runs until the test finishes it, and records when it started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._done: dict[str, asyncio.Event] = {}

    def work(self, name: str):  # noqa: ANN201 - a coroutine factory
        self._done[name] = asyncio.Event()

        async def hash_() -> str:
            self.started.append(name)
            await self._done[name].wait()
            return name

        return hash_

    def finish(self, name: str) -> None:
        self._done[name].set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_registrations_leave_a_thread_for_logins() -> None:
    gate, hashes = admission(), Hashes()
    registrations = [asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work(f"r{n}"))) for n in range(3)]
    await settle()
    assert hashes.started == ["r0"], "registrations may hold all threads but one"
    login = asyncio.create_task(gate.run(Lane.LOGIN, hashes.work("login")))
    await settle()
    assert hashes.started == ["r0", "login"], "a login starts at once on the thread kept for logins"
    hashes.finish("login")
    assert await login == "login"
    for n in range(3):
        hashes.finish(f"r{n}")
    assert await asyncio.gather(*registrations) == ["r0", "r1", "r2"]


async def test_a_waiting_login_goes_before_registrations_that_waited_longer() -> None:
    gate, hashes = admission(registration_waiting=3), Hashes()
    busy = asyncio.create_task(gate.run(Lane.LOGIN, hashes.work("busy login")))
    registrations = [asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work(f"r{n}"))) for n in range(3)]
    await settle()
    assert hashes.started == ["busy login", "r0"]
    login = asyncio.create_task(gate.run(Lane.LOGIN, hashes.work("login")))
    await settle()
    assert "login" not in hashes.started  # both threads are busy
    hashes.finish("r0")  # a registration's thread frees: the login takes it, not r1
    await settle()
    assert hashes.started == ["busy login", "r0", "login"]
    for name in ("busy login", "login", "r1", "r2"):
        hashes.finish(name)
    await asyncio.gather(busy, login, *registrations)
    assert hashes.started == ["busy login", "r0", "login", "r1", "r2"]


async def test_a_full_lane_refuses_at_once_with_a_503_and_retry_after() -> None:
    gate, hashes = admission(registration_waiting=2), Hashes()
    held = [asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work(f"r{n}"))) for n in range(3)]  # 1 running, 2 waiting
    await settle()
    with pytest.raises(ServiceUnavailable) as refused, gate.place(Lane.REGISTRATION):
        pytest.fail("a fourth registration got a place")
    assert refused.value.status == 503 and refused.value.retry_after == 1
    assert "busy" in refused.value.detail
    # The refusal took no place and the lane still serves those it holds.
    for n in range(3):
        hashes.finish(f"r{n}")
    assert len(await asyncio.gather(*held)) == 3
    assert gate.placed(Lane.REGISTRATION) == 0 and gate.running(Lane.REGISTRATION) == 0


async def test_a_place_is_held_while_the_caller_makes_its_checks() -> None:
    """A caller that has a place but has not asked for a thread yet (it is counting its attempt in
    the database) still fills the lane: a flood is refused before it reaches the database."""
    gate = admission(registration_waiting=1)
    with gate.place(Lane.REGISTRATION), gate.place(Lane.REGISTRATION), pytest.raises(ServiceUnavailable), gate.place(Lane.REGISTRATION):
        pass
    with gate.place(Lane.REGISTRATION):  # the places were given back
        assert gate.placed(Lane.REGISTRATION) == 1


async def test_waiting_longer_than_the_lane_allows_is_a_503_and_frees_the_place() -> None:
    gate, hashes = admission(threads=2, wait=0.05), Hashes()
    first = asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work("first")))
    await settle()
    with pytest.raises(ServiceUnavailable):
        await gate.run(Lane.REGISTRATION, hashes.work("second"))
    assert hashes.started == ["first"] and gate.waiting(Lane.REGISTRATION) == 0
    hashes.finish("first")
    await first
    assert gate.placed(Lane.REGISTRATION) == 0


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    gate, hashes = admission(threads=2), Hashes()
    first = asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work("first")))
    gone = asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work("gone")))
    then = asyncio.create_task(gate.run(Lane.REGISTRATION, hashes.work("then")))
    await settle()
    gone.cancel()
    await settle()
    hashes.finish("first")
    await settle()
    assert hashes.started == ["first", "then"]
    hashes.finish("then")
    await asyncio.gather(first, then)
    assert gate.running(Lane.REGISTRATION) == 0 and gate.placed(Lane.REGISTRATION) == 0


async def test_never_more_hashes_than_threads_whatever_the_mix() -> None:
    gate, most, busy = password_admission(), 0, 0

    async def hash_() -> None:
        nonlocal most, busy
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.01)
        busy -= 1

    async def one(lane: Lane) -> None:
        try:
            await gate.run(lane, hash_)
        except ServiceUnavailable:
            pass

    await asyncio.gather(*(one(Lane.LOGIN if n % 3 else Lane.REGISTRATION) for n in range(60)))
    assert most == passwords.HASH_THREADS


def test_the_password_lanes_keep_a_thread_for_logins() -> None:
    assert PASSWORD_LANES[Lane.LOGIN].threads == passwords.HASH_THREADS
    assert PASSWORD_LANES[Lane.REGISTRATION].threads == max(1, passwords.HASH_THREADS - 1)
