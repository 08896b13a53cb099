"""The issue's targets, checked against one run's results: PASS, FAIL, or SKIP when not measured.

- `POST /posts` reaches ≥ 0.7× the aiohttp → aio-pika echo at 64 connections, same run;
- its p99 ≤ 100 ms at 64 connections, and it has zero errors at every concurrency;
- p50 ≤ 3 ms at concurrency 1 (checked for each of the stack's cases);
- every service ≤ 100 MB RSS after the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from bench.cases import CASES, STACK_CASES
from bench.measurement import CaseResult, Memory

THROUGHPUT_RATIO = 0.7
HIGH_CONCURRENCY = 64
P99_LIMIT_MS = 100.0
LOW_CONCURRENCY = 1
P50_LIMIT_MS = 3.0
RSS_LIMIT_MB = 100.0
SERVICES = ("gateway", "auth", "users", "posts")

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Target:
    name: str
    status: Status
    detail: str


def _verdict(ok: bool) -> Status:
    return "PASS" if ok else "FAIL"


def check_targets(results: Iterable[CaseResult], final_memory: Mapping[str, Memory]) -> list[Target]:
    results = list(results)
    by = {(r.case, r.concurrency): r for r in results}
    targets = []

    post, echo = by.get(("create_post", HIGH_CONCURRENCY)), by.get(("echo", HIGH_CONCURRENCY))
    name = f"POST /posts >= {THROUGHPUT_RATIO}x echo at c={HIGH_CONCURRENCY}"
    if post is None or echo is None or echo.load.rps == 0:
        targets.append(Target(name, "SKIP", "POST /posts or the echo baseline was not measured at that concurrency"))
    else:
        ratio = post.load.rps / echo.load.rps
        targets.append(Target(name, _verdict(ratio >= THROUGHPUT_RATIO), f"{post.load.rps:.0f} / {echo.load.rps:.0f} req/s = {ratio:.2f}x"))

    name = f"POST /posts p99 <= {P99_LIMIT_MS:g} ms at c={HIGH_CONCURRENCY}"
    if post is None:
        targets.append(Target(name, "SKIP", "not measured at that concurrency"))
    else:
        targets.append(Target(name, _verdict(post.load.p99_ms <= P99_LIMIT_MS), f"p99 {post.load.p99_ms:.1f} ms"))

    posts = [r for r in results if r.case == "create_post"]
    name = "POST /posts zero errors"
    if not posts:
        targets.append(Target(name, "SKIP", "not measured"))
    else:
        errors = sum(r.load.error_count + r.load.exhausted for r in posts)
        targets.append(Target(name, _verdict(errors == 0), f"{errors} errors in {sum(r.load.requests for r in posts)} requests"))

    for case in STACK_CASES:
        low = by.get((case, LOW_CONCURRENCY))
        if low is not None:
            targets.append(
                Target(
                    f"{CASES[case].label} p50 <= {P50_LIMIT_MS:g} ms at c={LOW_CONCURRENCY}",
                    _verdict(low.load.p50_ms <= P50_LIMIT_MS),
                    f"p50 {low.load.p50_ms:.2f} ms",
                )
            )

    for service in SERVICES:
        name = f"{service} RSS <= {RSS_LIMIT_MB:g} MB after the run"
        memory = final_memory.get(service)
        if memory is None:
            targets.append(Target(name, "SKIP", "pid unknown"))
        else:
            targets.append(
                Target(name, _verdict(memory.rss_mb <= RSS_LIMIT_MB), f"RSS {memory.rss_mb:.1f} MB (peak {memory.hwm_kb / 1024:.1f} MB)")
            )
    return targets
