"""Argon2id hashing off the event loop, on a few threads of its own (each hash takes 64 MiB)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher

from auth_service import passwords

pytestmark = pytest.mark.unit


class CountingHasher:
    """The real hasher, counting how many hashes run at once and on which threads."""

    def __init__(self, real: PasswordHasher) -> None:
        self.real, self.busy, self.most, self.threads = real, 0, 0, set[int]()
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        with self._lock:
            self.busy += 1
            self.most = max(self.most, self.busy)
            self.threads.add(threading.get_ident())
        try:
            return self.real.hash(password)
        finally:
            with self._lock:
                self.busy -= 1

    def verify(self, password_hash: str, password: str) -> bool:
        return self.real.verify(password_hash, password)


async def test_a_burst_of_hashes_runs_on_at_most_hash_threads_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", counting)
    hashes = await asyncio.gather(*(passwords.hash_password(f"password {n}") for n in range(6)))
    assert counting.most == passwords.HASH_THREADS
    assert threading.get_ident() not in counting.threads and len(counting.threads) <= passwords.HASH_THREADS
    assert all([await passwords.verify_password(h, f"password {n}") for n, h in enumerate(hashes)])
    assert not await passwords.verify_password(hashes[0], "password 1")
