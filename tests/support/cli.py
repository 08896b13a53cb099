"""Running a command-line tool with a hard time limit, whatever it leaves behind.

`subprocess.run(..., capture_output=True, timeout=...)` reads the tool's pipes to their end, even
after the timeout killed the tool: a child it left running with the pipes open (an Erlang CLI's
epmd, or a VM waiting on a node that does not answer) makes that wait last for ever, and the test
with it. Here the output goes to files, the tool runs in a session of its own, and everything in
that session is killed when the tool ends or its time is up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def run(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to its end or for `timeout` seconds (then subprocess.TimeoutExpired), feeding it `stdin`."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as given:
        given.write((stdin or "").encode())
        given.seek(0)
        process = subprocess.Popen(
            list(argv), env=None if env is None else dict(env), stdin=given, stdout=out, stderr=err, cwd=cwd, start_new_session=True
        )
        try:
            process.wait(timeout)
        finally:
            kill_session(process)
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """Kill everything in the session `process` leads (it was started with start_new_session), and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
