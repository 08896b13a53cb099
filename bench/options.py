"""The command line of `python -m bench`, read once into a frozen object."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.cases import CASES
from bench.live_fanout import EVENTS, STREAMS

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
RESULTS_DIR = Path(__file__).with_name("results")

EXAMPLES = """
examples:
  python -m bench                                  # its own stack, every case at 1, 16 and 64
  python -m bench --duration 5 --concurrency 1,64 --cases echo,create_post
  python -m bench --duration 5 --concurrency 16,64 --cases echo,create_post --replicas 2
                                                   # two processes of each service on their queues
  python -m bench --duration 2 --concurrency 1 --cases get_post,list_posts,live_fanout --live-streams 20 --live-events 2
                                                   # a smoke run of the read side only
  python -m bench --gateway-url http://127.0.0.1:8080 --amqp-url amqp://guest:guest@127.0.0.1:5672/ \\
      --pid gateway=1234 --pid posts=1240          # a stack already running
"""


#: The event loops `--loop` may name.
LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class Options:
    concurrency: tuple[int, ...]
    duration_s: int  # wrk takes whole seconds only
    warmup_s: int
    cases: tuple[str, ...]
    users: int
    gateway_url: str | None
    amqp_url: str
    database_url: str
    pids: dict[str, int]
    output_dir: Path
    strict: bool
    live_streams: int = STREAMS
    live_events: int = EVENTS
    #: Processes of each service (auth, users, posts) the started stack runs; one gateway.
    replicas: int = 1
    #: The event loop the harness runs on, and with it the in-process drivers (the broker's
    #: `delete-post` RPCs, the /live streams): uvloop, as every service and the gateway run.
    loop: str = "uvloop"

    @property
    def external(self) -> bool:
        return self.gateway_url is not None


def _positive_ints(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers of at least 1")
    return values


def _cases(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in CASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"cases are among: {', '.join(CASES)}")
    return tuple(c for c in CASES if c in chosen)  # always in run order


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError("NAME=PID, e.g. gateway=1234")
    return name, int(pid)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the stack against two baselines measured in the same run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--concurrency", type=_positive_ints, default=(1, 16, 64), help="connections or RPCs in flight (default 1,16,64)")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per case and concurrency (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured whole seconds before each run, 0 for none (default 1)")
    parser.add_argument("--cases", type=_cases, default=tuple(CASES), help=f"comma-separated, among {', '.join(CASES)}")
    parser.add_argument("--users", type=int, default=8, help="authors writing and deleting posts (default 8)")
    parser.add_argument("--gateway-url", help="use a stack already running at this gateway instead of starting one")
    parser.add_argument(
        "--amqp-url",
        default=DEFAULT_AMQP_URL,
        help="the broker: with --gateway-url the running stack's (vhost included), else where to create a vhost",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="PostgreSQL: with --gateway-url the running stack's database, else where to create one",
    )
    parser.add_argument(
        "--pid",
        type=_pid,
        action="append",
        default=[],
        metavar="NAME=PID",
        help="with --gateway-url: a process to measure (gateway, auth, users, posts); repeatable",
    )
    parser.add_argument("--live-streams", type=int, default=STREAMS, help=f"GET /live streams the fan-out opens (default {STREAMS})")
    parser.add_argument(
        "--live-events", type=int, default=EVENTS, help=f"events the fan-out sends to them, one at a time (default {EVENTS})"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="processes of each service (auth, users, posts) on the started stack's queues; the gateway stays one (default 1)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="the harness's event loop, which drives the broker RPCs and /live streams itself (default uvloop, as the services)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where the JSON and PNG go (default bench/results)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.users < 1:
        parser.error("--duration must be positive, --warmup not negative, --users at least 1")
    if args.replicas < 1 or (args.replicas > 1 and args.gateway_url):
        parser.error("--replicas must be at least 1, and applies only to a stack this run starts (not --gateway-url)")
    if args.live_streams < 1 or args.live_events < 1:
        parser.error("--live-streams and --live-events must be at least 1")
    return Options(
        concurrency=tuple(sorted(set(args.concurrency))),
        duration_s=args.duration,
        warmup_s=args.warmup,
        cases=args.cases,
        users=args.users,
        gateway_url=args.gateway_url.rstrip("/") if args.gateway_url else None,
        amqp_url=args.amqp_url,
        database_url=args.database_url,
        pids=dict(args.pid),
        output_dir=args.output_dir,
        strict=args.strict,
        live_streams=args.live_streams,
        live_events=args.live_events,
        replicas=args.replicas,
        loop=args.loop,
    )
