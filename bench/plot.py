"""The PNG: throughput and p99 latency against concurrency, one line per case, baselines dashed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench.cases import CASES
from bench.measurement import CaseResult


def plot_results(results: Iterable[CaseResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    series: dict[str, list[CaseResult]] = {}
    for result in results:
        series.setdefault(result.case, []).append(result)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 6))
    for case, points in series.items():
        points.sort(key=lambda r: r.concurrency)
        x = [r.concurrency for r in points]
        style = "--" if CASES[case].baseline else "-"
        throughput.plot(x, [r.load.rps for r in points], style, marker="o", label=CASES[case].label)
        latency.plot(x, [r.load.p99_ms for r in points], style, marker="o", label=CASES[case].label)
    for axes, ylabel in ((throughput, "requests per second"), (latency, "p99 latency (ms); dotted: the 100 ms target")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({r.concurrency for points in series.values() for r in points}))
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.set_yscale("log")
        axes.set_xlabel("concurrency (connections or RPCs in flight)")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
    latency.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    handles, labels = throughput.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize="small")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
