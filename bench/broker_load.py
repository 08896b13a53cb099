"""Load straight on the broker: `delete-post` commands with N RPCs in flight, no gateway.

It is not HTTP, so not wrk: N asyncio workers share one `CommandClient` (the production client:
persistent messages, publisher confirms, direct reply-to) and each sends its next command as soon
as the reply to the last one arrives, like wrk's connections. Each post id is deleted once, by its
author; a worker that finds no ids left stops and counts as `exhausted`.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import Sequence

import aio_pika

from bench.measurement import LoadResult
from shared.broker import login_user
from shared.client import CommandClient
from shared.errors import AppError

RPC_TIMEOUT_SECONDS = 10.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def load_result(latencies_s: list[float], duration_s: float, errors: dict[str, int], exhausted: int) -> LoadResult:
    ordered = sorted(latencies_s)
    return LoadResult(
        requests=len(ordered),
        duration_s=duration_s,
        p50_ms=percentile(ordered, 50) * 1000,
        p95_ms=percentile(ordered, 95) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        errors=errors,
        exhausted=exhausted,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive_delete_posts(
    amqp_url: str, items: list[tuple[str, str]], *, concurrency: int, duration_s: float
) -> tuple[LoadResult, float]:
    """Delete `items` ((token, post id) pairs) for `duration_s`; the result and this driver's CPU seconds."""
    connection = await aio_pika.connect(amqp_url)
    client = CommandClient(connection, user_id=login_user(amqp_url), timeout=RPC_TIMEOUT_SECONDS)
    await client.start()
    pending = list(reversed(items))
    latencies: list[float] = []
    errors = {"non2xx": 0, "timeout": 0}
    exhausted = 0

    async def worker(deadline: float) -> None:
        nonlocal exhausted
        while time.perf_counter() < deadline:
            if not pending:
                exhausted += 1
                return
            token, post_id = pending.pop()
            started = time.perf_counter()
            try:
                await client.call("delete-post", {"post_id": post_id}, token=token)
            except AppError as exc:
                errors["timeout" if exc.status == 504 else "non2xx"] += 1
            latencies.append(time.perf_counter() - started)

    try:
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(started + duration_s) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    finally:
        await client.close()
        await connection.close()
    return load_result(latencies, elapsed, errors, exhausted), cpu
