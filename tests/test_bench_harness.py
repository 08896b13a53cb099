"""The benchmark harness's arithmetic, without load: wrk's output, /proc, percentiles and targets.

Canned wrk output and a fake /proc tree stand in for real runs, so CI proves the parsing and the
PASS/FAIL logic of `python -m bench` in milliseconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ runs from the checkout (`python -m bench`) and is not installed with the services.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import procstat, wrk
from bench.broker_load import load_result, percentile
from bench.live_fanout import EventDelivery, FanoutResult
from bench.measurement import CaseResult, LoadResult, Memory
from bench.median import main, median_of
from bench.options import parse_options
from bench.report import format_table
from bench.targets import check_targets

pytestmark = pytest.mark.unit

WRK_STDOUT = """\
Running 5s test @ http://127.0.0.1:8080/posts
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    80.12ms   20.01ms 250.00ms   70.00%
    Req/Sec   400.00     50.00   500.00     68.00%
  4000 requests in 5.00s, 1.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    800.00
Transfer/sec:    204.00KB
BENCH_RESULT {"requests": 4000, "duration_us": 5000000, "non2xx": 3, "connect": 0, "read": 1, "write": 0, "timeout": 2, "p50_us": 75500, "p95_us": 120250, "p99_us": 180000, "exhausted": 0}
"""


def test_wrk_result_line_is_read() -> None:
    result = wrk.parse_output(WRK_STDOUT)
    assert result.requests == 4000
    assert result.rps == pytest.approx(800.0)
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (75.5, 120.25, 180.0)
    assert result.errors == {"non2xx": 3, "connect": 0, "read": 1, "write": 0, "timeout": 2}
    assert result.error_count == 6


def test_wrk_output_without_result_line_is_an_error() -> None:
    with pytest.raises(wrk.WrkError, match="BENCH_RESULT"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_and_scripts() -> None:
    assert wrk.WrkRun("http://x/", 1, 5).threads == 1
    assert wrk.WrkRun("http://x/", 64, 5).threads == 2
    assert wrk.WrkRun("http://x/", 3, 5).threads == 1  # wrk would drop the odd connection
    command = wrk.command(wrk.WrkRun("http://x/posts", 64, 5, "delete_post.lua", ("ids.txt",)), Path("s.lua"))
    assert command[:9] == ["wrk", "-t", "2", "-c", "64", "-d", "5s", "--timeout", wrk.TIMEOUT]
    assert command[-3:] == ["--", "ids.txt", "2"]  # delete_post.lua shares ids out by thread
    for script in ("create_post.lua", "delete_post.lua", "get_post.lua", "json_post.lua", None):
        text = wrk.script_text(script)
        assert "function done(" in text and wrk.MARKER.strip() in text and "latency:percentile(95)" in text


def test_proc_stat_with_a_hostile_command_name() -> None:
    stat = "4242 (post (gres) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 1 0 100 1000 50"
    assert procstat.parse_stat_ticks(stat) == 1234 + 567


def test_proc_status_memory() -> None:
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t   90112 kB\nVmRSS:\t   70656 kB\nThreads:\t3\n"
    memory = procstat.parse_status_memory(status)
    assert memory == Memory(rss_kb=70656, hwm_kb=90112)
    assert memory.rss_mb == pytest.approx(69.0)


def _fake_process(proc: Path, pid: int, comm: str, cmdline: str, ticks: tuple[int, int]) -> None:
    directory = proc / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "comm").write_text(comm + "\n")
    (directory / "cmdline").write_text(cmdline.replace(" ", "\0") + "\0")
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(ticks[0]), str(ticks[1]), "0", "0"]
    (directory / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields))


def test_cpu_per_group_from_two_snapshots(tmp_path: Path) -> None:
    tick = procstat.CLOCK_TICKS
    _fake_process(tmp_path, 10, "postgres", "postgres: 15/main: checkpointer", (100, 0))
    _fake_process(tmp_path, 11, "postgres", "postgres: 15/main: postgres zt_bench_1 127.0.0.1(5000) idle", (10, 10))
    _fake_process(tmp_path, 12, "beam.smp", "/usr/lib/erlang/bin/beam.smp -W w", (500, 100))
    _fake_process(tmp_path, 13, "python", "python -m gateway", (40, 2))
    groups = {
        "gateway": procstat.fixed(13),
        "rabbitmq": procstat.by_comm("beam.smp"),
        "postgres": procstat.by_comm("postgres"),
        "postgres_db": procstat.postgres_backends_of("zt_bench_1"),
    }
    before = procstat.snapshot(groups, tmp_path)
    _fake_process(tmp_path, 11, "postgres", "postgres: 15/main: postgres zt_bench_1 127.0.0.1(5000) idle", (10 + tick, 10))
    # A backend that started mid-run counts in full; one of another database only in "postgres".
    _fake_process(tmp_path, 14, "postgres", "postgres: 15/main: postgres zt_bench_1 127.0.0.1(5001) idle", (tick // 2, 0))
    _fake_process(tmp_path, 15, "postgres", "postgres: 15/main: postgres zt_bench_10 127.0.0.1(5002) idle", (tick, 0))
    _fake_process(tmp_path, 12, "beam.smp", "/usr/lib/erlang/bin/beam.smp -W w", (500 + 2 * tick, 100 + tick))
    spent = procstat.cpu_seconds(before, procstat.snapshot(groups, tmp_path))
    assert spent == {"gateway": 0.0, "rabbitmq": 3.0, "postgres": 2.5, "postgres_db": 1.5}


def test_a_process_gone_reads_as_none(tmp_path: Path) -> None:
    assert procstat.read_ticks(999, tmp_path) is None
    assert procstat.read_memory(999, tmp_path) is None


def test_percentiles_of_the_broker_driver() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert percentile([], 99) == 0.0
    result = load_result([0.003, 0.001, 0.002], 2.0, {"non2xx": 1}, exhausted=0)
    assert (result.requests, result.rps, result.p50_ms, result.error_count) == (3, 1.5, 2.0, 1)


def _result(
    case: str, concurrency: int, rps: float, p50: float = 1.0, p99: float = 50.0, errors: int = 0, cpu: dict[str, float] | None = None
) -> CaseResult:
    load = LoadResult(requests=int(rps * 10), duration_s=10.0, p50_ms=p50, p95_ms=p99 / 2, p99_ms=p99, errors={"non2xx": errors})
    return CaseResult(case, case, concurrency, load, cpu or {}, {})


SMALL = {name: Memory(rss_kb=80 * 1024, hwm_kb=90 * 1024) for name in ("gateway", "auth", "users", "posts")}


def _statuses(results: list[CaseResult], memory: dict[str, Memory], fanout: FanoutResult | None = None) -> dict[str, str]:
    return {t.name: t.status for t in check_targets(results, memory, fanout)}


def _fanout(*max_ms: float, streams: int = 500, delivered: int = 500) -> FanoutResult:
    events = tuple(EventDelivery(f"p{n}", streams, delivered, p50_ms=m / 2, p99_ms=m, max_ms=m) for n, m in enumerate(max_ms))
    return FanoutResult(streams, streams, 1.0, {}, events)


def test_targets_pass() -> None:
    results = [
        _result("echo", 64, 1000),
        _result("create_post", 1, 300, p50=2.5),
        _result("create_post", 64, 550, p99=100),
        _result("delete_post", 1, 200, p50=2.9),
        _result("get_post", 64, 3000, p99=50),
    ]
    statuses = _statuses(results, SMALL, _fanout(400, 1000))
    assert set(statuses.values()) == {"PASS"}
    assert "POST /posts >= 0.55x echo at c=64" in statuses


def test_targets_fail() -> None:
    results = [
        _result("echo", 64, 1000),
        _result("create_post", 1, 300, p50=3.5),
        _result("create_post", 64, 549, p99=101, errors=1),
    ]
    memory = {**SMALL, "posts": Memory(rss_kb=101 * 1024, hwm_kb=120 * 1024)}
    statuses = _statuses(results, memory)
    assert statuses["POST /posts >= 0.55x echo at c=64"] == "FAIL"
    assert statuses["POST /posts p99 <= 100 ms at c=64"] == "FAIL"
    assert statuses["POST /posts zero errors"] == "FAIL"
    assert statuses["POST /posts (authorized) p50 <= 3 ms at c=1"] == "FAIL"
    assert statuses["posts RSS <= 100 MB after the run"] == "FAIL"
    assert statuses["gateway RSS <= 100 MB after the run"] == "PASS"


def test_ids_running_out_count_as_errors() -> None:
    load = LoadResult(requests=100, duration_s=1.0, p50_ms=1, p95_ms=1, p99_ms=1, errors={"non2xx": 0}, exhausted=5)
    statuses = _statuses([CaseResult("create_post", "x", 16, load, {}, {})], SMALL)
    assert statuses["POST /posts zero errors"] == "FAIL"


def test_targets_not_measured_are_skipped() -> None:
    statuses = _statuses([_result("create_post", 16, 500)], {})
    assert statuses["POST /posts >= 0.55x echo at c=64"] == "SKIP"
    assert statuses["POST /posts p99 <= 100 ms at c=64"] == "SKIP"
    assert statuses["gateway RSS <= 100 MB after the run"] == "SKIP"
    assert not any("p50" in name for name in statuses)


def test_cpu_per_request_and_the_table() -> None:
    result = _result("create_post", 64, 500, cpu={"gateway": 2.5, "posts": 5.0, "rabbitmq": 1.0})
    assert result.cpu_us_per_request() == {"gateway": 500.0, "posts": 1000.0, "rabbitmq": 200.0}
    assert result.to_json()["cpu_us_per_request"]["posts"] == 1000.0
    row = format_table([result]).splitlines()[3]
    assert row.split()[:3] == ["create_post", "64", "500"]
    assert "500" in row and "1000" in row


def test_the_harness_runs_on_uvloop_unless_asked_for_the_plain_loop() -> None:
    """Its broker driver is an in-process CommandClient: on the loop the services send commands on."""
    assert parse_options([]).loop == "uvloop"
    assert parse_options(["--loop", "asyncio"]).loop == "asyncio"
    with pytest.raises(SystemExit):
        parse_options(["--loop", "trio"])


def test_replicas_apply_only_to_a_started_stack() -> None:
    assert parse_options(["--replicas", "2"]).replicas == 2
    for wrong in (["--replicas", "0"], ["--replicas", "2", "--gateway-url", "http://127.0.0.1:8080"]):
        with pytest.raises(SystemExit):
            parse_options(wrong)


def _run_document(echo: float, post: float, post_p99: float, post_cpu: float, rss_mb: float, errors: int = 0) -> dict[str, object]:
    results = [
        _result("echo", 64, echo, cpu={"echo_server": 1.0}),
        _result("create_post", 64, post, p99=post_p99, errors=errors, cpu={"gateway": post_cpu * post * 10 / 1e6}),
    ]
    return {
        "cases": [r.to_json() for r in results],
        "final_memory_kb": {"posts": {"rss_kb": int(rss_mb * 1024), "hwm_kb": int(rss_mb * 1024)}},
    }


def test_the_median_of_three_runs_is_taken_figure_by_figure() -> None:
    documents = [
        _run_document(echo=1000, post=500, post_p99=90, post_cpu=2000, rss_mb=70),
        _run_document(echo=800, post=600, post_p99=120, post_cpu=1000, rss_mb=90),
        _run_document(echo=900, post=400, post_p99=95, post_cpu=3000, rss_mb=80, errors=2),
    ]
    results, memory = median_of(documents)
    by = {r.case: r for r in results}
    assert by["echo"].load.rps == pytest.approx(900, rel=1e-3)
    assert by["create_post"].load.rps == pytest.approx(500, rel=1e-3)
    assert by["create_post"].load.p99_ms == 95
    assert by["create_post"].cpu_us_per_request()["gateway"] == pytest.approx(2000, rel=1e-3)
    assert by["create_post"].load.error_count == 2, "the worst run's errors count"
    assert memory["posts"].rss_mb == pytest.approx(90)
    statuses = _statuses(results, memory)
    assert statuses["POST /posts >= 0.55x echo at c=64"] == "PASS"  # 500 / 900, though one run had 0.44x
    assert statuses["POST /posts p99 <= 100 ms at c=64"] == "PASS"
    assert statuses["POST /posts zero errors"] == "FAIL"


def test_the_median_command_prints_the_table_and_fails_on_a_failed_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, post in enumerate((300, 350, 400)):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(_run_document(echo=1000, post=post, post_p99=200, post_cpu=1500, rss_mb=70)))
        paths.append(str(path))
    assert main(paths) == 1
    out = capsys.readouterr().out
    assert "median of 3 runs" in out
    assert "FAIL  POST /posts >= 0.55x echo at c=64: 350 / 1000 req/s = 0.35x" in out
