"""The local stack without Docker: the Procfile under honcho starts all four services, and when
one dies honcho stops the others (what `scripts/stack` runs)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.stack import ROOT, Stack, free_port

HONCHO = Path(sys.executable).with_name("honcho")


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def service_pid(root: int, package: str) -> int:
    for pid in children_of(root):
        try:
            if f"-m\x00{package}" in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
        except OSError:
            continue
    raise AssertionError(f"{package} is not running under honcho")


@pytest.mark.skipif(not HONCHO.exists(), reason="honcho is not installed in this environment")
async def test_honcho_runs_the_stack_and_stops_it_when_one_service_dies(stack: Stack) -> None:
    # The stack's own processes keep running: this is a second stack on other ports, same backends.
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for variable in ("GATEWAY_PORT", "AUTH_HTTP_PORT", "USERS_HTTP_PORT", "POSTS_HTTP_PORT"):
        env[variable] = str(free_port())
    env["AUTH_JWKS_URL"] = f"http://127.0.0.1:{env['AUTH_HTTP_PORT']}/.well-known/jwks.json"
    honcho = subprocess.Popen(
        [str(HONCHO), "start", "-f", "Procfile"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{env['GATEWAY_PORT']}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert honcho.poll() is None, "honcho exited before the stack was ready"
                assert time.monotonic() < deadline, "the honcho stack was not ready within 60 s"
                await asyncio.sleep(0.3)
        packages = ("gateway", "auth_service", "users_service", "posts_service")
        pids = {package: service_pid(honcho.pid, package) for package in packages}

        os.kill(pids["posts_service"], signal.SIGKILL)
        code = await asyncio.to_thread(honcho.wait, 30)
        assert code != 0, "honcho should report that a process died"
        for package, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], (
                f"{package} was left running after posts_service died"
            )
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
