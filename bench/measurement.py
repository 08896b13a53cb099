"""What one load run measured: the figures every driver (wrk, the broker driver) reports alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoadResult:
    """Requests, latency percentiles and errors of one run at one concurrency."""

    requests: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    #: non2xx (an HTTP status ≥ 400 or an error reply), connect, read, write, timeout.
    errors: dict[str, int] = field(default_factory=dict)
    #: requests sent after the pre-created ids ran out (they are errors too).
    exhausted: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Memory:
    """Resident memory of one process, in kB: now, and the high-water mark of its life."""

    rss_kb: int
    hwm_kb: int

    @property
    def rss_mb(self) -> float:
        return self.rss_kb / 1024


@dataclass(frozen=True)
class CaseResult:
    """One case at one concurrency: the load figures and what each process spent on them."""

    case: str
    label: str
    concurrency: int
    load: LoadResult
    cpu_seconds: dict[str, float]
    memory: dict[str, Memory]

    def cpu_us_per_request(self) -> dict[str, float]:
        if self.load.requests == 0:
            return {name: 0.0 for name in self.cpu_seconds}
        return {name: seconds * 1e6 / self.load.requests for name, seconds in self.cpu_seconds.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": self.load.requests,
            "duration_s": round(self.load.duration_s, 3),
            "rps": round(self.load.rps, 1),
            "latency_ms": {"p50": self.load.p50_ms, "p95": self.load.p95_ms, "p99": self.load.p99_ms},
            "errors": {**self.load.errors, "total": self.load.error_count},
            "exhausted": self.load.exhausted,
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu_seconds.items()},
            "cpu_us_per_request": {k: round(v, 1) for k, v in self.cpu_us_per_request().items()},
            "memory_kb": {k: asdict(v) for k, v in self.memory.items()},
        }
