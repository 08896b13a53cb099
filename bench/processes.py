"""The processes a run starts (`python -m …`), their logs, and waiting for them to answer."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from tests.support.stack import ROOT


class ProcessSet:
    """Named child processes, each logging to `<log_dir>/<name>.log`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None) -> int:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=dict(env) if env else None,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self.processes[name].pid

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def logs(self, name: str, tail: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs(name)}")

    def stop(self, *names: str) -> None:
        for name in names or tuple(self.processes):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def wait_ok(self, url: str, *, method: str = "GET", body: bytes | None = None, timeout: float = 90) -> None:
        """Until `url` answers 200 (while every process is still alive)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    async with http.request(method, url, data=body, timeout=aiohttp.ClientTimeout(total=3)) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.25)
        raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")
