"""CPU time and memory of processes, read from /proc.

A snapshot maps each named group of processes to `{pid: utime + stime in clock ticks}`; the
difference of two snapshots is what each group spent during a run. A group is either fixed pids
(the gateway, a service, a baseline server) or found anew at each snapshot (every `postgres`
process, this run's database backends, RabbitMQ's `beam.smp`), so backends that appear
mid-run are counted too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.measurement import Memory

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

PidFinder = Callable[[Path], list[int]]
Snapshot = dict[str, dict[int, int]]


def parse_stat_ticks(stat: str) -> int:
    """utime + stime from the text of /proc/<pid>/stat (fields 14 and 15)."""
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def parse_status_memory(status: str) -> Memory:
    """VmRSS and VmHWM (kB) from the text of /proc/<pid>/status."""
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return Memory(rss_kb=values.get("VmRSS", 0), hwm_kb=values.get("VmHWM", 0))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the process has gone


def read_ticks(pid: int, proc: Path = PROC) -> int | None:
    text = _read(proc / str(pid) / "stat")
    return parse_stat_ticks(text) if text else None


def read_memory(pid: int, proc: Path = PROC) -> Memory | None:
    text = _read(proc / str(pid) / "status")
    return parse_status_memory(text) if text else None


def _processes(proc: Path) -> list[tuple[int, str, str]]:
    """(pid, comm, cmdline) of every process."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        comm, cmdline = _read(entry / "comm"), _read(entry / "cmdline")
        if comm is not None and cmdline is not None:
            found.append((int(entry.name), comm.strip(), cmdline.replace("\0", " ").strip()))
    return found


def by_comm(name: str) -> PidFinder:
    return lambda proc: [pid for pid, comm, _ in _processes(proc) if comm == name]


def postgres_backends_of(database: str) -> PidFinder:
    """Backends serving `database`: their title is `postgres: <cluster>: <user> <database> <host> ...`."""
    return lambda proc: [pid for pid, comm, cmdline in _processes(proc) if comm == "postgres" and f" {database} " in f"{cmdline} "]


def fixed(pid: int) -> PidFinder:
    return lambda _proc: [pid]


def snapshot(groups: Mapping[str, PidFinder], proc: Path = PROC) -> Snapshot:
    taken: Snapshot = {}
    for name, find in groups.items():
        ticks = {pid: read_ticks(pid, proc) for pid in find(proc)}
        taken[name] = {pid: value for pid, value in ticks.items() if value is not None}
    return taken


def cpu_seconds(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group spent between two snapshots; a pid new in `after` counts in full."""
    spent = {}
    for name, pids in after.items():
        earlier = before.get(name, {})
        ticks = sum(max(0, value - earlier.get(pid, 0)) for pid, value in pids.items())
        spent[name] = ticks / CLOCK_TICKS
    return spent


def standard_groups(pids: Mapping[str, int], database: str | None) -> dict[str, PidFinder]:
    """The named pids, RabbitMQ, every postgres process, and (if known) this run's database backends."""
    groups = {name: fixed(pid) for name, pid in pids.items()}
    groups["rabbitmq"] = by_comm("beam.smp")
    groups["postgres"] = by_comm("postgres")
    if database:
        groups["postgres_db"] = postgres_backends_of(database)
    return groups


def read_all_memory(pids: Mapping[str, int], proc: Path = PROC) -> dict[str, Memory]:
    found = {name: read_memory(pid, proc) for name, pid in pids.items()}
    return {name: memory for name, memory in found.items() if memory is not None}
