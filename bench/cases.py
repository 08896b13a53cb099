"""The cases a run measures, in the order it runs them, and which processes do each one's work.

The two baselines come first; `POST /posts` runs before the deletes because the posts it writes
are what they delete.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    http: str | None  # the process answering HTTP (a table column)
    service: str | None  # the process doing the work behind it (a table column)
    baseline: bool = False


CASES: dict[str, Case] = {
    case.key: case
    for case in (
        Case("hello", "bare aiohttp JSON hello", "hello", None, baseline=True),
        Case("echo", "bare aiohttp -> aio-pika RPC echo", "echo_server", "echo_consumer", baseline=True),
        Case("create_post", "POST /posts (authorized)", "gateway", "posts"),
        Case("get_post", "GET /posts/{id}", "gateway", "posts"),
        Case("delete_post", "DELETE /posts/{id} (owner)", "gateway", "posts"),
        Case("broker_delete", "delete-post on the broker", None, "posts"),
    )
}
#: The cases that need the stack (the others need only a broker).
STACK_CASES = tuple(key for key, case in CASES.items() if not case.baseline)
