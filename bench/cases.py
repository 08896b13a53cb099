"""The cases a run measures, in the order it runs them, and which processes do each one's work.

The two baselines come first; `POST /posts` runs before the deletes because the posts it writes
are what they delete. The reads run between them, when no write invalidates a cached answer, each
after every path it reads was fetched once, so what they measure is a warm cache (on a gateway
without one, the same reads cross the broker). The `/live` fan-out comes last: the posts it
creates would empty the cached first page, and its open streams would hear every delete.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The first page `list_posts` reads, the web UI's (and the contract's default) size.
LIST_LIMIT = 20


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    http: str | None  # the process answering HTTP (a table column)
    service: str | None  # the process doing the work behind it (a table column)
    baseline: bool = False
    #: measured once with N open streams (bench/live_fanout.py), not at each concurrency by a load run
    fanout: bool = False


CASES: dict[str, Case] = {
    case.key: case
    for case in (
        Case("hello", "bare aiohttp JSON hello", "hello", None, baseline=True),
        Case("echo", "bare aiohttp -> aio-pika RPC echo", "echo_server", "echo_consumer", baseline=True),
        Case("create_post", "POST /posts (authorized)", "gateway", "posts"),
        Case("get_post", "GET /posts/{id} (cached)", "gateway", "posts"),
        Case("list_posts", f"GET /posts?limit={LIST_LIMIT} (cached)", "gateway", "posts"),
        Case("delete_post", "DELETE /posts/{id} (owner)", "gateway", "posts"),
        Case("broker_delete", "delete-post on the broker", None, "posts"),
        Case("live_fanout", "GET /live fan-out", "gateway", None, fanout=True),
    )
}
#: The cases that need the stack (the others need only a broker).
STACK_CASES = tuple(key for key, case in CASES.items() if not case.baseline)
#: The cases a load generator drives at each concurrency (all but the fan-out).
LOAD_CASES = tuple(key for key, case in CASES.items() if not case.fanout)
