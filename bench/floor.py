"""How close to the echo can an authorized write get? The echo, and the echo plus the least
database work such a write needs, measured side by side.

    python -m bench.floor [--duration 8] [--connections 64] [--statements 3] [--runs 3]

An authorized `POST /posts` must, in one PostgreSQL transaction, check the session and claim the
message id, write the post, then save the reply, the audit row and the event: with asyncpg that
is BEGIN, three statements and COMMIT at the least (shared/bookkeeping.py), five round trips.
This starts two copies of the echo baseline (bench.echo_server in front of bench.echo_consumer):
one plain, one whose consumer runs such a transaction (BEGIN, `--statements` INSERTs, COMMIT)
per message before it replies. It drives both with wrk in alternation, `--runs` times, and
prints each pair's req/s and their ratio. No token, no validation, no logging, no outbox relay:
the ratio is a ceiling for the real path on this machine, not a measure of it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from uuid import uuid4

from bench import wrk
from bench.options import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL
from bench.processes import ProcessSet
from bench.stack import Backends
from tests.support.stack import free_port


async def _start_echo(processes: ProcessSet, name: str, amqp_url: str, *consumer_args: str) -> str:
    port, queue = free_port(), f"bench.floor.{uuid4().hex[:8]}"
    processes.start(f"{name}_consumer", "bench.echo_consumer", amqp_url, queue, *consumer_args)
    processes.start(f"{name}_server", "bench.echo_server", str(port), amqp_url, queue)
    url = f"http://127.0.0.1:{port}"
    await processes.wait_ok(url + "/", method="POST", body=b"{}")
    return url


async def measure(duration: int, connections: int, statements: int, runs: int) -> list[tuple[float, float]]:
    backends = Backends(DEFAULT_DATABASE_URL, DEFAULT_AMQP_URL)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    processes = ProcessSet(work_dir)
    await backends.create()
    try:
        plain = await _start_echo(processes, "plain", backends.amqp_url)
        with_tx = await _start_echo(processes, "tx", backends.amqp_url, backends.database_url, str(statements))
        pairs = []
        for number in range(1, runs + 1):
            measured = []
            for url in (plain, with_tx):
                run = wrk.WrkRun(url + "/", connections, duration, "json_post.lua")
                await wrk.run_wrk(wrk.WrkRun(run.url, connections, 1, run.script), work_dir)  # warm-up
                result, _ = await wrk.run_wrk(run, work_dir)
                measured.append(result.requests / result.duration_s)
            print(
                f"run {number}: echo {measured[0]:.0f} req/s, echo + transaction {measured[1]:.0f} req/s,"
                f" ratio {measured[1] / measured[0]:.2f}",
                flush=True,
            )
            pairs.append((measured[0], measured[1]))
        return pairs
    finally:
        processes.stop()
        await backends.drop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="whole seconds per measurement (default 8)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--statements", type=int, default=3, help="INSERTs between BEGIN and COMMIT (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="pairs of measurements (default 3)")
    options = parser.parse_args()
    pairs = asyncio.run(measure(options.duration, options.connections, options.statements, options.runs))
    ratios = [tx / echo for echo, tx in pairs]
    print(
        f"median ratio (echo + BEGIN, {options.statements} INSERTs, COMMIT) / echo at c={options.connections}:"
        f" {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
