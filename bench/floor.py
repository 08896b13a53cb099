"""How close to the echo can an authorized write get? The echo, and the echo plus the least work
such a write needs, measured side by side.

    python -m bench.floor [--duration 8] [--connections 64] [--statements 3] [--runs 3] [--loop uvloop]

An authorized `POST /posts` must, in one PostgreSQL transaction, check the session and claim the
message id, write the post, then save the reply, the audit row and the event: with asyncpg that
is BEGIN, three statements and COMMIT at the least (shared/bookkeeping.py), five round trips. Its
command travels through a durable quorum queue as a persistent message (a crash loses none), and
the event its commit wrote is published with a confirm and consumed by the gateway's read side.

This starts copies of the echo baseline (bench.echo_server in front of bench.echo_consumer), each
adding some of that work: a transaction (BEGIN, `--statements` INSERTs, COMMIT) per message;
the quorum queue and a confirmed persistent event that the server consumes and acks; and both,
with a transaction per message or shared by the messages waiting (group commit at its barest).
It drives them with wrk in turn, `--runs` times, and prints each variant's req/s and its ratio to
the plain echo of the same round. No token, no validation, no logging, no outbox, no savepoints:
each ratio is a ceiling for the real path on this machine, not a measure of it. The plain echo
runs on asyncio's own loop, as `python -m bench`'s baseline does; `--loop uvloop` runs the
variants on uvloop, as the stack runs, so their ratios are the ceiling for the stack as it is built.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from uuid import uuid4

from bench import wrk
from bench.options import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, LOOPS
from bench.processes import ProcessSet
from bench.stack import Backends
from tests.support.stack import free_port

#: What each variant adds to the plain echo: (a database transaction: none, one per message, or
#: shared by the messages waiting (group commit); the quorum queue; the event).
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "echo": ("none", False, False),
    "echo + transaction": ("each", False, False),
    "echo + quorum queue": ("none", True, False),
    "echo + event": ("none", False, True),
    "echo + quorum queue + event": ("none", True, True),
    "echo + quorum queue + event + transaction": ("each", True, True),
    "echo + quorum queue + event + group-committed transaction": ("grouped", True, True),
}


async def start_echo(
    processes: ProcessSet,
    name: str,
    backends: Backends,
    *,
    transaction: str,
    quorum: bool,
    event: bool,
    statements: int,
    uvloop: bool = False,
) -> tuple[str, str]:
    """Start one variant: its echo server's URL, and its queue (its events exchange is the queue's
    name + `.events`)."""
    port, queue = free_port(), f"bench.floor.{uuid4().hex[:8]}"
    consumer_args: list[str] = []
    server_args: list[str] = []
    if transaction != "none":
        consumer_args += ["--database-url", backends.database_url, "--statements", str(statements)]
    if transaction == "grouped":
        consumer_args.append("--group-commit")
    if quorum:
        consumer_args.append("--quorum")
        server_args.append("--quorum")
    if event:
        events = f"{queue}.events"
        consumer_args += ["--events", events]
        server_args += ["--events", events]
    if uvloop:
        consumer_args.append("--uvloop")
        server_args.append("--uvloop")
    # Both declare the queue and the events exchange (the same way), so either may start first.
    processes.start(f"{name}_consumer", "bench.echo_consumer", backends.amqp_url, queue, *consumer_args)
    processes.start(f"{name}_server", "bench.echo_server", str(port), backends.amqp_url, queue, *server_args)
    url = f"http://127.0.0.1:{port}"
    await processes.wait_ok(url + "/", method="POST", body=b"{}")
    return url, queue


async def measure(duration: int, connections: int, statements: int, runs: int, loop: str = "asyncio") -> list[dict[str, float]]:
    """Each round's req/s by variant."""
    backends = Backends(DEFAULT_DATABASE_URL, DEFAULT_AMQP_URL)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    processes = ProcessSet(work_dir)
    await backends.create()
    try:
        urls = {}
        for number, (variant, (transaction, quorum, event)) in enumerate(VARIANTS.items()):
            urls[variant], _ = await start_echo(
                processes,
                f"v{number}",
                backends,
                transaction=transaction,
                quorum=quorum,
                event=event,
                statements=statements,
                uvloop=loop == "uvloop" and variant != "echo",
            )
        rounds = []
        for number in range(1, runs + 1):
            measured = {}
            for variant, url in urls.items():
                run = wrk.WrkRun(url + "/", connections, duration, "json_post.lua")
                await wrk.run_wrk(wrk.WrkRun(run.url, connections, 1, run.script), work_dir)  # warm-up
                result, _ = await wrk.run_wrk(run, work_dir)
                measured[variant] = result.requests / result.duration_s
            echo = measured["echo"]
            print(
                f"run {number}: " + ", ".join(f"{variant} {rate:.0f} req/s ({rate / echo:.2f}x)" for variant, rate in measured.items()),
                flush=True,
            )
            rounds.append(measured)
        return rounds
    finally:
        processes.stop()
        await backends.drop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="whole seconds per measurement (default 8)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--statements", type=int, default=3, help="INSERTs between BEGIN and COMMIT (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of measurements (default 3)")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the variants' event loop; the plain echo's is asyncio (default asyncio)",
    )
    options = parser.parse_args()
    rounds = asyncio.run(measure(options.duration, options.connections, options.statements, options.runs, options.loop))
    print(
        f"median ratio to the echo at c={options.connections} ({options.statements} INSERTs per transaction;"
        f" the variants on {options.loop}):"
    )
    for variant in VARIANTS:
        if variant != "echo":
            print(f"  {variant}: {statistics.median(r[variant] / r['echo'] for r in rounds):.2f}")


if __name__ == "__main__":
    main()
