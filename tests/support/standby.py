"""A PostgreSQL primary and its synchronous streaming standby, made with Debian's postgresql-common.

Two clusters of the test's own (`pg_createcluster`, fresh ports, never the machine's `main`): the
primary runs with `synchronous_standby_names = '*'` and `synchronous_commit = on`, so a commit is
acknowledged only once the standby has it on disk; the standby is a `pg_basebackup -R` copy
streaming from it. The test can then stop the primary the hard way and promote the standby, and
both clusters are dropped afterwards whatever happened.

Clusters belong to the `postgres` user (postgresql-common's rule when root creates them), so the
base backup runs as that user (`runuser`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from tests.support.stack import free_port

TOOLS = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_basebackup", "runuser", "psql")
#: How long the standby may take to stream from the primary as its synchronous standby.
SYNC_SECONDS = 30.0


def missing_tools() -> str | None:
    """Why a primary and standby cannot be made here, or None when they can."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"needs Debian's postgresql-common and PostgreSQL client tools: {', '.join(absent)} not found"
    if _version() is None:
        return "needs a PostgreSQL server installed under /usr/lib/postgresql"
    if os.geteuid() != 0:
        return "needs root: pg_createcluster writes /etc/postgresql and the cluster belongs to postgres"
    return None


def _version() -> str | None:
    """The newest PostgreSQL server installed (the one pg_createcluster would pick by default)."""
    root = Path("/usr/lib/postgresql")
    versions = [p.name for p in root.iterdir() if (p / "bin" / "postgres").exists()] if root.is_dir() else []
    return max(versions, key=float) if versions else None


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class ReplicatedPair:
    version: str
    primary: str
    standby: str
    primary_port: int
    standby_port: int

    def url(self, database: str = "postgres") -> str:
        """Both hosts, the primary first, taking only the one that accepts writes."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}/{database}?target_session_attrs=read-write"
        )

    def standby_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/{database}"

    def ctl(self, cluster: str, *action: str) -> None:
        _run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, cluster, *action)

    def sql(self, port: int, query: str) -> str:
        return _run("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atc", query).strip()

    def stop_primary(self) -> None:
        """What a crashed or unplugged primary looks like to its clients: no shutdown checkpoint,
        every connection cut at once."""
        self.ctl(self.primary, "stop", "-m", "immediate")

    def promote(self) -> None:
        """The standby becomes the primary (pg_ctl waits until it takes writes)."""
        self.ctl(self.standby, "promote")

    def log(self, cluster: str, tail: int = 30) -> str:
        path = Path(f"/var/log/postgresql/postgresql-{self.version}-{cluster}.log")
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""


@contextmanager
def replicated_pair() -> Iterator[ReplicatedPair]:
    """A running primary with a synchronous standby, both dropped after the block."""
    version = _version()
    assert version is not None, missing_tools()
    run_id = uuid4().hex[:8]
    pair = ReplicatedPair(version, f"zt_{run_id}_primary", f"zt_{run_id}_standby", free_port(), free_port())
    try:
        _run(
            "pg_createcluster", version, pair.primary, "-p", str(pair.primary_port),
            "-o", "synchronous_standby_names=*", "-o", "synchronous_commit=on",
            "--", "--auth=trust",
        )  # fmt: skip
        pair.ctl(pair.primary, "start")
        # The standby's own configuration (in /etc/postgresql) names no synchronous standby: once
        # promoted it must take writes alone, not wait for a standby it does not have.
        _run("pg_createcluster", version, pair.standby, "-p", str(pair.standby_port), "--", "--auth=trust")
        data = Path(f"/var/lib/postgresql/{version}/{pair.standby}")
        for entry in data.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        _run(
            "runuser", "-u", "postgres", "--", "pg_basebackup", "-h", "127.0.0.1", "-p", str(pair.primary_port),
            "-U", "postgres", "-D", str(data), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        pair.ctl(pair.standby, "start")
        deadline = time.monotonic() + SYNC_SECONDS
        while pair.sql(pair.primary_port, "SELECT string_agg(sync_state, ',') FROM pg_stat_replication") != "sync":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby did not become synchronous:\n{pair.log(pair.standby)}")
            time.sleep(0.2)
        yield pair
    finally:
        for cluster in (pair.standby, pair.primary):
            subprocess.run(["pg_dropcluster", "--stop", version, cluster], capture_output=True, timeout=120)
