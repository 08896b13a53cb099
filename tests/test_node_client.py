"""A third-party client: clients/node, a Node.js amqplib client written only from README.md and
asyncapi.yaml, runs its tests (`node --test`) against this run's stack, on the run's vhost.

It registers two users and logs in, creates a post and deletes it, and gets every refusal the
documents promise: no token 401, a forged token 401, another user's post 403, an unknown post 404,
a malformed payload 422, no message_id or a body that is not JSON 400, an unknown command
returned as unroutable (mandatory). Its `authorization` header goes as a string and as a byte array.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess

from tests.support.backends import Backends
from tests.support.node import NODE_DIR, require_node
from tests.support.stack import Stack

TESTS = NODE_DIR / "test" / "client.test.js"


async def test_the_node_client_follows_the_published_documents(backends: Backends, stack: Stack) -> None:
    node = require_node()
    env = {**os.environ, "AMQP_URL": backends.amqp_url, "NODE_NO_WARNINGS": "1"}
    command = [node, "--test", "--test-reporter=tap", str(TESTS.relative_to(NODE_DIR))]
    # In a thread: the session's event loop keeps serving the fixtures while node runs.
    result = await asyncio.to_thread(subprocess.run, command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    totals = {name: int(count) for name, count in re.findall(r"^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$", output, re.M)}
    declared = len(re.findall(r"^test\(", TESTS.read_text(), re.M))
    # Every test ran and passed: none skipped (AMQP_URL reached it), none cancelled by a hang.
    assert totals == {"tests": declared, "pass": declared, "fail": 0, "skipped": 0, "todo": 0, "cancelled": 0}, output[-6000:]
