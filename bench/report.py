"""What a run shows: the terminal table, the targets, and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.cases import CASES
from bench.live_fanout import FanoutResult
from bench.measurement import CaseResult, Memory
from bench.targets import Target

#: CPU columns: (heading, process name or a case role).
CPU_COLUMNS = (
    ("http", "@http"),
    ("svc", "@service"),
    ("auth", "auth"),
    ("users", "users"),
    ("rabbit", "rabbitmq"),
    ("pg all", "postgres"),
    ("pg db", "postgres_db"),
    ("loadgen", "loadgen"),
)


def _cpu_cell(result: CaseResult, process: str) -> str:
    case = CASES[result.case]
    name = {"@http": case.http, "@service": case.service}.get(process, process)
    value = result.cpu_us_per_request().get(name or "")
    return "-" if value is None else f"{value:.0f}"


def format_table(results: Iterable[CaseResult]) -> str:
    head = f"{'case':<34} {'c':>3} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':>6} |"
    head += "".join(f" {title:>7}" for title, _ in CPU_COLUMNS)
    lines = [" " * 68 + "| CPU µs per request", head, "-" * len(head)]
    for r in results:
        load = r.load
        line = (
            f"{r.label:<34} {r.concurrency:>3} {load.rps:>7.0f} {load.p50_ms:>7.2f} {load.p95_ms:>7.2f} "
            f"{load.p99_ms:>7.2f} {load.error_count:>6} |"
        )
        lines.append(line + "".join(f" {_cpu_cell(r, process):>7}" for _, process in CPU_COLUMNS))
    lines.append("latency in ms; http = gateway or baseline server, svc = posts_service or echo consumer")
    return "\n".join(lines)


def format_memory(memory: Mapping[str, Memory]) -> str:
    return "memory after the run (MB, RSS / peak): " + ", ".join(
        f"{name} {m.rss_mb:.1f} / {m.hwm_kb / 1024:.1f}" for name, m in memory.items()
    )


def format_fanout(fanout: FanoutResult) -> str:
    """The fan-out's lines: streams opened, the gateway's memory with them, each event, the worst."""
    if fanout.skipped is not None:
        return f"/live fan-out: SKIPPED: {fanout.skipped}"
    lines = [f"/live fan-out: {fanout.opened} of {fanout.streams} streams open in {fanout.open_s:.1f} s"]
    if fanout.failures:
        lines[0] += " (" + ", ".join(f"{count} {why}" for why, count in sorted(fanout.failures.items())) + ")"
    rss = fanout.gateway_rss_kb
    if "before" in rss and "open" in rss and fanout.opened:
        per_stream = (rss["open"] - rss["before"]) / fanout.opened
        lines.append(
            f"  gateway RSS {rss['before'] / 1024:.1f} MB -> {rss['open'] / 1024:.1f} MB with them open ({per_stream:.1f} kB per stream)"
        )
    for number, event in enumerate(fanout.events, 1):
        if event.error is not None:
            lines.append(f"  event {number}: {event.error}")
        else:
            lines.append(
                f"  event {number}: {event.delivered}/{event.streams} streams, p50 {event.p50_ms:.1f} ms, "
                f"p99 {event.p99_ms:.1f} ms, max {event.max_ms:.1f} ms (POST answered in {event.answer_ms:.1f} ms)"
            )
    lines.append("  latency from the POST's send to the stream's `event: post.created` for that post")
    return "\n".join(lines)


def format_targets(targets: Iterable[Target]) -> str:
    return "\n".join(f"  {t.status:<4}  {t.name}: {t.detail}" for t in targets)


def write_json(
    path: Path,
    *,
    machine: Mapping[str, Any],
    options: Mapping[str, Any],
    results: Iterable[CaseResult],
    final_memory: Mapping[str, Memory],
    targets: Iterable[Target],
    background: Mapping[str, Mapping[str, float]],
    fanout: FanoutResult | None = None,
) -> None:
    document = {
        "machine": dict(machine),
        "options": dict(options),
        "background_cpu_percent": {when: dict(cpu) for when, cpu in background.items()},
        "cases": [r.to_json() for r in results],
        "live_fanout": fanout.to_json() if fanout is not None else None,
        "final_memory_kb": {name: asdict(m) for name, m in final_memory.items()},
        "targets": [asdict(t) for t in targets],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
