"""Node.js for the tests that run third-party tools from clients/node: the amqplib client written
only from the published documents, and redocly, which lints the OpenAPI document.

scripts/test installs clients/node's locked dependencies (`npm ci`) where npm is installed.
Without node or those dependencies the tests skip, unless REQUIRE_NODE is set (CI sets it), where
that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.support.stack import ROOT

NODE_DIR = ROOT / "clients" / "node"
#: Where npm records what it installed; present once `npm ci` has run.
_INSTALLED = NODE_DIR / "node_modules" / ".package-lock.json"


def require_node(minimum: tuple[int, int] = (18, 0)) -> str:
    """The path of `node` (at least version `minimum`), with clients/node's dependencies
    installed; else a skip (or a failure in CI)."""
    node = shutil.which("node")
    if node is None:
        missing = "node is not installed (apt-get install nodejs npm)"
    elif (version := _version(node)) < minimum:
        missing = f"node {'.'.join(map(str, version))} is older than {'.'.join(map(str, minimum))}"
    elif not _INSTALLED.exists():
        missing = "clients/node's dependencies are not installed (scripts/test runs npm ci where npm is installed)"
    else:
        return node
    if os.environ.get("REQUIRE_NODE"):
        pytest.fail(f"REQUIRE_NODE is set but {missing}")
    pytest.skip(missing)


def _version(node: str) -> tuple[int, int]:
    output = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.match(r"v(\d+)\.(\d+)", output)
    return (int(found[1]), int(found[2])) if found else (0, 0)
