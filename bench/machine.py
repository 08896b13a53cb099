"""A description of the machine and software a run measured, for the JSON file and RESULTS.md."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import asyncpg


def _first_line(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


async def _postgres_version(database_url: str | None) -> str | None:
    if not database_url:
        return None
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def describe_machine(database_url: str | None) -> dict[str, object]:
    debian = Path("/etc/debian_version")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "debian": debian.read_text().strip() if debian.exists() else None,
        "python": platform.python_version(),
        "rabbitmq": _first_line(["rabbitmqctl", "version"]),
        "postgresql": await _postgres_version(database_url),
        "wrk": _first_line(["wrk", "-v"]),
        "aiohttp": metadata.version("aiohttp"),
        "aio-pika": metadata.version("aio-pika"),
    }
