"""schemathesis against the live gateway's own OpenAPI document: generated requests (valid and
not) never cause a 500, every status and body matches what the document says, and invalid input
is refused. The run uses a fixed seed so CI is reproducible; set SCHEMATHESIS_SEED to explore."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.accounts import User
from tests.support.stack import ROOT, Stack

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed in this environment")
async def test_the_gateway_conforms_to_its_openapi_document(stack: Stack, new_user, tmp_path: Path) -> None:
    user: User = await new_user("schemathesis")
    command = [
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        f"{stack.gateway_url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"),
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "20261127"),
        "--workers",
        "2",
        "--header",
        f"Authorization: Bearer {user.token}",
        # Logging out would revoke the token the rest of the run uses; logout has its own tests.
        "--exclude-path",
        "/auth/logout",
        # An endless event stream: schemathesis would wait on its body forever; tests/test_live.py owns it.
        "--exclude-path",
        "/live",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = await _run(command)
    assert result.returncode == 0, result.stdout[-6000:]


async def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    # In a thread: the session's event loop keeps serving fixtures while schemathesis runs.
    return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=600)
