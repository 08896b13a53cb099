"""Password hashing with Argon2id, off the event loop.

Hashing is deliberately slow (tens of milliseconds), so it runs in a worker thread: one login must
not stall every other message the service is handling. Each hash also takes 64 MiB of memory, so
the threads are few and of their own: with asyncio's default pool a burst of logins ran six at
once and took auth_service from 70 MB to 450 MB; two cap it near 200 MB at the same throughput on
a 2-core machine (hashing is CPU-bound, so more threads than cores buy nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

T = TypeVar("T")

#: Concurrent hashes, each 64 MiB; the rest wait their turn.
HASH_THREADS = 2
_threads = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="argon2")

_hasher = PasswordHasher()  # argon2-cffi's defaults are Argon2id with RFC 9106's low-memory profile
#: Verified against when the email is unknown, so a miss takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("this password matches no account")


async def _off_loop(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_threads, work)


async def hash_password(password: str) -> str:
    return await _off_loop(lambda: _hasher.hash(password))


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await _off_loop(verify)


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
