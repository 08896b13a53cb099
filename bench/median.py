"""`python -m bench.median A.json B.json C.json`: the median of several runs, and the targets on it.

One run on a shared 2-core machine moves by ±15 % in throughput and by a millisecond at p50, so
the issues judge their targets on the median of three runs. Each figure (req/s, p50, p95, p99 and
every process's CPU per request) is the median of that figure across the runs, for each case and
concurrency measured in all of them; errors are the most any run had, memory the largest RSS
after a run, and the `/live` fan-out is left out (it is judged in its own run). Exits 1 when a
target fails, like `python -m bench --strict`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.measurement import CaseResult, LoadResult, Memory
from bench.targets import HIGH_CONCURRENCY, check_targets


def _case(rows: Sequence[dict[str, Any]]) -> CaseResult:
    """One case at one concurrency: the median of each figure over `rows`, one per run."""

    def median(get: Any) -> float:
        return float(statistics.median(get(row) for row in rows))

    cpu_names = set.intersection(*(set(row["cpu_us_per_request"]) for row in rows))
    rps = median(lambda r: r["rps"])
    requests = round(median(lambda r: r["requests"]))
    errors = max((row["errors"] for row in rows), key=lambda e: e["total"])
    load = LoadResult(
        # The median run's request count, over the time that makes its rate the median rate.
        requests=requests,
        duration_s=requests / rps if rps else 0.0,
        p50_ms=median(lambda r: r["latency_ms"]["p50"]),
        p95_ms=median(lambda r: r["latency_ms"]["p95"]),
        p99_ms=median(lambda r: r["latency_ms"]["p99"]),
        errors={k: v for k, v in errors.items() if k != "total"},
        exhausted=max(row["exhausted"] for row in rows),
    )
    # CPU µs per request back into seconds for the median's request count.
    cpu = {name: median(lambda r, n=name: r["cpu_us_per_request"][n]) * load.requests / 1e6 for name in cpu_names}
    first = rows[0]
    return CaseResult(first["case"], first["label"], first["concurrency"], load, cpu, {})


def median_of(documents: Sequence[dict[str, Any]]) -> tuple[list[CaseResult], dict[str, Memory]]:
    """The median results of the runs (cases in the first run's order) and the worst memory."""
    keyed = [{(row["case"], row["concurrency"]): row for row in document["cases"]} for document in documents]
    results = [_case([run[key] for run in keyed]) for key in keyed[0] if all(key in run for run in keyed)]
    memory: dict[str, Memory] = {}
    for document in documents:
        for name, kb in document.get("final_memory_kb", {}).items():
            seen = memory.get(name)
            if seen is None or kb["rss_kb"] > seen.rss_kb:
                memory[name] = Memory(rss_kb=kb["rss_kb"], hwm_kb=max(kb["hwm_kb"], seen.hwm_kb if seen else 0))
    return results, memory


def _write_ratio(document: dict[str, Any]) -> float | None:
    """One run's POST /posts against the echo at c=64, the ratio the throughput target judges."""
    rps = {row["case"]: row["rps"] for row in document["cases"] if row["concurrency"] == HIGH_CONCURRENCY}
    post, echo = rps.get("create_post"), rps.get("echo")
    return post / echo if post and echo else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.median", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("runs", nargs="+", type=Path, help="result files of `python -m bench` (bench/results/*.json)")
    args = parser.parse_args(argv)
    documents = [json.loads(path.read_text()) for path in args.runs]
    results, memory = median_of(documents)
    targets = check_targets(results, memory)
    print(f"median of {len(documents)} runs: {', '.join(path.name for path in args.runs)}")
    ratios = [_write_ratio(document) for document in documents]
    if all(ratio is not None for ratio in ratios):
        print("POST /posts / echo at c=64, run by run: " + ", ".join(f"{ratio:.2f}x" for ratio in ratios if ratio is not None))
    print(report.format_table(results))
    if memory:
        print(report.format_memory(memory))
    print("targets:\n" + report.format_targets(targets))
    return 1 if any(t.status == "FAIL" for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
