"""`python -m bench --replicas N`: the stack it starts runs N processes of each service, competing
consumers of the same queues, each measured under its own name (`posts-2`)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# bench/ runs from the checkout (`python -m bench`) and is not installed with the services.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.options import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL
from bench.stack import Backends as BenchBackends
from bench.stack import start_stack as start_bench_stack


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="the bench creates its vhost with rabbitmqctl")
async def test_a_started_stack_runs_each_service_as_competing_replicas(tmp_path: Path) -> None:
    """`--replicas 2`: a second process of each service consumes the same queues (two consumers
    on each command queue), measured like the first (its pid is named)."""
    backends = BenchBackends(DEFAULT_DATABASE_URL, DEFAULT_AMQP_URL)
    await backends.create()
    stack = None
    try:
        stack = await start_bench_stack(backends, tmp_path, replicas=2)
        assert {"auth-2", "users-2", "posts-2"} <= set(stack.pids)
        # A replica is ready once it serves; its consumers register a moment later.
        deadline = time.monotonic() + 20
        while True:
            listed = subprocess.run(
                ["rabbitmqctl", "list_queues", "-p", backends.name, "name", "consumers", "--formatter", "json"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            consumers = {row["name"]: row["consumers"] for row in json.loads(listed.stdout)}
            if all(consumers[f"{service}.commands"] == 2 for service in ("auth", "users", "posts")):
                break
            assert time.monotonic() < deadline, consumers
            await asyncio.sleep(0.5)
    finally:
        if stack is not None:
            stack.stop()
        await backends.drop()
