"""One benchmark run from start to finish: set up, measure every case, report, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiohttp

from bench import procstat, report
from bench.baselines import BASELINE_PROCESSES, start_baselines
from bench.cases import CASES
from bench.dataset import PostPool, create_posts, create_users, harvest_posts
from bench.drivers import Context, prepare
from bench.live_fanout import FanoutResult, measure_fanout
from bench.machine import describe_machine
from bench.measurement import CaseResult, Memory
from bench.options import Options
from bench.plot import plot_results
from bench.processes import ProcessSet
from bench.stack import Backends, Stack, start_stack
from bench.targets import Target, check_targets

T = TypeVar("T")
READ_POSTS = 100
IDLE_SECONDS = 3


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def with_countdown(work: Awaitable[T], seconds: float, label: str) -> T:
    """Await `work`, showing the seconds left on a terminal."""
    task = asyncio.ensure_future(work)
    started = asyncio.get_running_loop().time()
    while sys.stderr.isatty() and not task.done():
        left = max(0.0, seconds - (asyncio.get_running_loop().time() - started))
        print(f"\r  {label}: {left:4.0f} s left ", end="", file=sys.stderr, flush=True)
        await asyncio.wait({task}, timeout=1)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    return await task


async def prepare_data(ctx: Context, options: Options) -> None:
    assert ctx.http is not None
    say(f"creating {options.users} authors and {READ_POSTS} posts to read")
    ctx.writers = await create_users(ctx.http, options.users, "writer")
    reader = await create_users(ctx.http, 1, "reader")
    read_ids = [post_id for _, post_id in await create_posts(ctx.http, reader, READ_POSTS)]
    ctx.read_ids_file = ctx.work_dir / "read-ids.txt"
    ctx.read_ids_file.write_text("".join(f"{post_id}\n" for post_id in read_ids))
    ctx.pool = PostPool({user.id: user for user in ctx.writers})


async def measure_background(groups: dict[str, procstat.PidFinder]) -> dict[str, float]:
    """CPU % each group uses with no load from us: the machine is shared, so this is the noise floor."""
    before = procstat.snapshot(groups)
    await asyncio.sleep(IDLE_SECONDS)
    spent = procstat.cpu_seconds(before, procstat.snapshot(groups))
    return {name: round(100 * seconds / IDLE_SECONDS, 1) for name, seconds in spent.items()}


async def measure_all(
    ctx: Context, options: Options, groups: dict[str, procstat.PidFinder], pids: dict[str, int], processes: ProcessSet
) -> list[CaseResult]:
    runs = [(case, c) for case in options.cases if not CASES[case].fanout for c in options.concurrency]
    results: list[CaseResult] = []
    since, harvested = datetime.now(UTC), False
    for number, (case, concurrency) in enumerate(runs, 1):
        label = f"[{number}/{len(runs)}] {CASES[case].label} c={concurrency}"
        if case in ("delete_post", "broker_delete") and not harvested and ctx.http and ctx.pool:
            say(f"collected {await harvest_posts(ctx.http, ctx.pool, since)} posts to delete")
            harvested = True
        drive = await prepare(ctx, case, concurrency)
        say(f"{label}: {options.duration_s} s")
        before = procstat.snapshot(groups)
        load, loadgen_cpu = await with_countdown(drive(), options.duration_s, label)
        cpu = procstat.cpu_seconds(before, procstat.snapshot(groups))
        cpu["loadgen"] = loadgen_cpu
        result = CaseResult(case, CASES[case].label, concurrency, load, cpu, procstat.read_all_memory(pids))
        results.append(result)
        if case in ("create_post", "delete_post", "broker_delete"):
            ctx.writes_rps.append(load.rps)
        say(
            f"    {load.rps:.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
            f"{load.error_count} errors" + (f", {load.exhausted} past the last id" if load.exhausted else "")
        )
        if CASES[case].baseline and not any(CASES[c].baseline for c, _ in runs[number:]):
            processes.stop(*BASELINE_PROCESSES)  # done with them: only the stack runs from here
    return results


async def measure_live(ctx: Context, options: Options, pids: dict[str, int]) -> FanoutResult:
    """The `/live` fan-out, with an author of its own (its posts are nobody's to delete)."""
    assert ctx.http is not None
    say(f"{CASES['live_fanout'].label}: {options.live_streams} streams, {options.live_events} events")
    [author] = await create_users(ctx.http, 1, "live")
    gateway = pids.get("gateway")

    def gateway_rss_kb() -> int | None:
        memory = procstat.read_memory(gateway) if gateway is not None else None
        return memory.rss_kb if memory is not None else None

    fanout = await measure_fanout(
        ctx.http,
        ctx.gateway_url,
        author.token,
        streams=options.live_streams,
        events=options.live_events,
        say=say,
        gateway_rss_kb=gateway_rss_kb,
    )
    if fanout.skipped is not None:
        say(f"    skipped: {fanout.skipped}")
    return fanout


async def start_processes(
    options: Options, ctx: Context, processes: ProcessSet, backends: Backends | None
) -> tuple[Stack | None, dict[str, int]]:
    """Start the baselines and the stack (or describe the running one); the pids to measure."""
    pids: dict[str, int] = {}
    if any(CASES[case].baseline for case in options.cases):
        say("starting the baselines")
        await start_baselines(processes, ctx)
        pids.update({name: processes.pid(name) for name in BASELINE_PROCESSES})
    if all(CASES[case].baseline for case in options.cases):
        return None, pids
    if backends is not None:
        say("starting the stack")
        stack = await start_stack(backends, ctx.work_dir, replicas=options.replicas)
    else:
        assert options.gateway_url is not None
        database = urllib.parse.urlsplit(options.database_url).path.lstrip("/") or None
        stack = Stack(options.gateway_url, options.amqp_url, database, dict(options.pids))
    ctx.gateway_url = stack.gateway_url
    return stack, {**pids, **stack.pids}


def publish(
    options: Options,
    machine: dict[str, object],
    results: list[CaseResult],
    final_memory: dict[str, Memory],
    background: dict[str, dict[str, float]],
    fanout: FanoutResult | None = None,
) -> list[Target]:
    """The table and targets on the terminal, the JSON file and the plot; the targets."""
    targets = check_targets(results, final_memory, fanout)
    print(report.format_table(results))
    if fanout is not None:
        print(report.format_fanout(fanout))
    if final_memory:
        print(report.format_memory(final_memory))
    print("targets:\n" + report.format_targets(targets))
    options.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path, png_path = options.output_dir / f"{stamp}.json", options.output_dir / f"{stamp}.png"
    report.write_json(
        json_path,
        machine=machine,
        options=_options_json(options),
        results=results,
        final_memory=final_memory,
        targets=targets,
        background=background,
        fanout=fanout,
    )
    plot_results(results, png_path, f"{machine['cores']} cores, {machine['date']}, {options.duration_s} s per point")
    print(f"wrote {json_path} and {png_path}")
    return targets


async def run(options: Options) -> int:
    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    processes = ProcessSet(work_dir)
    backends = None if options.external else Backends(options.database_url, options.amqp_url)
    stack: Stack | None = None
    failed = True
    try:
        if backends is not None:
            say(f"creating database and vhost {backends.name}")
            await backends.create()
        amqp_url = backends.amqp_url if backends else options.amqp_url
        ctx = Context(work_dir, options.duration_s, options.warmup_s, amqp_url=amqp_url, say=say)
        stack, pids = await start_processes(options, ctx, processes, backends)
        machine = await describe_machine(backends.database_url if backends else options.database_url)
        groups = procstat.standard_groups(pids, stack.database_name if stack else None)
        async with contextlib.AsyncExitStack() as exits:
            if stack is not None:
                ctx.http = await exits.enter_async_context(aiohttp.ClientSession(base_url=stack.gateway_url))
                await prepare_data(ctx, options)
            background = {"before": await measure_background(groups)}
            say("CPU % with no load from us: " + _percentages(background["before"]))
            results = await measure_all(ctx, options, groups, pids, processes)
            fanout = await measure_live(ctx, options, pids) if "live_fanout" in options.cases else None
            background["after"] = await measure_background(groups)
            say("CPU % with no load from us, after: " + _percentages(background["after"]))
        targets = publish(options, machine, results, procstat.read_all_memory(stack.pids if stack else {}), background, fanout)
        failed = False
        return 1 if options.strict and any(t.status == "FAIL" for t in targets) else 0
    finally:
        processes.stop()
        if stack is not None:
            stack.stop()
        if backends is not None:
            await backends.drop()
        if failed:
            say(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def _percentages(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {percent:g}" for name, percent in cpu.items() if name in ("rabbitmq", "postgres", "postgres_db"))


def _options_json(options: Options) -> dict[str, object]:
    return {
        "concurrency": list(options.concurrency),
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "cases": list(options.cases),
        "users": options.users,
        "live_streams": options.live_streams,
        "live_events": options.live_events,
        "replicas": options.replicas,
        # The loop the harness really ran on (uvloop names its loop class in its own module).
        "loop": "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio",
        "external_stack": options.external,
    }
