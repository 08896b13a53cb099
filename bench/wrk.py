"""Running wrk and reading what it measured.

Each case's Lua script (bench/lua/) is joined with `report.lua`, whose `done()` hook prints one
`BENCH_RESULT {...}` JSON line: request count, duration, errors by kind and the p50/p95/p99
latency (wrk's `--latency` text has no p95). Non-2xx means a status of 400 or more, wrk's own
definition of a status error.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.measurement import LoadResult

LUA = Path(__file__).with_name("lua")
MARKER = "BENCH_RESULT "
TIMEOUT = "10s"


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


@dataclass(frozen=True)
class WrkRun:
    url: str
    connections: int
    duration_s: int  # wrk takes whole seconds only
    script: str | None = None  # a file name in bench/lua/, or None for a plain GET
    args: tuple[str, ...] = ()

    @property
    def threads(self) -> int:
        # wrk gives each thread connections // threads; two threads for two cores when it divides.
        return 2 if self.connections >= 2 and self.connections % 2 == 0 else 1


def script_text(script: str | None) -> str:
    case = (LUA / script).read_text() if script else ""
    return case + "\n" + (LUA / "report.lua").read_text()


def parse_output(stdout: str) -> LoadResult:
    """The result line of a wrk run with report.lua; WrkError if there is none."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise WrkError(f"wrk printed no {MARKER.strip()} line:\n{stdout}")
    return LoadResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors={key: int(data[key]) for key in ("non2xx", "connect", "read", "write", "timeout")},
        exhausted=int(data.get("exhausted", 0)),
    )


def command(run: WrkRun, script_path: Path) -> list[str]:
    return [
        "wrk",
        "-t",
        str(run.threads),
        "-c",
        str(run.connections),
        "-d",
        f"{run.duration_s}s",
        "--timeout",
        TIMEOUT,
        "-s",
        str(script_path),
        run.url,
        "--",
        *run.args,
        str(run.threads),
    ]


async def run_wrk(run: WrkRun, work_dir: Path) -> tuple[LoadResult, float]:
    """Run wrk to the end; its result and the CPU seconds wrk itself used."""
    if shutil.which("wrk") is None:
        raise WrkError("wrk is not installed (Debian: apt-get install wrk)")
    script_path = work_dir / f"wrk-{run.script or 'get.lua'}"
    script_path.write_text(script_text(run.script))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = await asyncio.create_subprocess_exec(
        *command(run, script_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}: {(stderr or stdout).decode(errors='replace')[:2000]}")
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_output(stdout.decode(errors="replace")), spent
