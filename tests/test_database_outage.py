"""When PostgreSQL goes away: a service stops taking commands (they wait, unacknowledged, with
backoff rather than a busy loop), reports not-ready, and finishes every waiting command once the
database returns. Nothing accepted is lost.

PostgreSQL is taken away from one process through a TCP proxy the test can cut, so the machine's
database keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.faults import DATABASE_CUT, FaultWatch
from tests.support.proxy import CuttableProxy
from tests.support.stack import ROOT, Stack, free_port

pytestmark = pytest.mark.fault


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status


async def test_a_service_holds_commands_through_a_database_outage(
    stack: Stack, faults: FaultWatch, broker: BrokerProbe, db: asyncpg.Pool, new_user, wait_until
) -> None:
    faults.expect(*DATABASE_CUT)
    user: User = await new_user("db-outage")
    upstream = urllib.parse.urlsplit(stack.env["DATABASE_URL"])
    proxy = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432)
    await proxy.start()
    netloc = f"{upstream.username}@127.0.0.1:{proxy.port}" if upstream.username else f"127.0.0.1:{proxy.port}"
    port = free_port()
    env = {
        **stack.env_for("posts"),
        "DATABASE_URL": urllib.parse.urlunsplit((upstream.scheme, netloc, upstream.path, upstream.query, "")),
        "POSTS_HTTP_PORT": str(port),
    }
    stack.stop("posts")  # only the proxied instance consumes posts.commands now
    log = open(stack.log_dir / "posts-db-proxied.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen([sys.executable, "-m", "posts_service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    ready_url = f"http://127.0.0.1:{port}/readyz"
    try:
        await wait_until(lambda: _answers(ready_url, 200), timeout=30)
        await proxy.cut()
        replies = [
            asyncio.create_task(broker.command("create-post", {"title": f"held {i}", "body": "b"}, token=user.token, timeout=60))
            for i in range(10)
        ]
        await asyncio.sleep(3)
        assert not any(task.done() for task in replies), "a command was answered while the database was down"
        assert await status_of(ready_url) == 503
        cpu_before = _cpu_seconds(process.pid)
        await asyncio.sleep(2)
        cpu_used = _cpu_seconds(process.pid) - cpu_before
        assert cpu_used < 0.5, f"the service burned {cpu_used:.2f} s of CPU in 2 s while waiting: a busy loop"

        await proxy.restore()
        started = time.monotonic()
        answers = await asyncio.gather(*replies)
        print(
            f"\n10 held commands answered {time.monotonic() - started:.1f} s after the database came back; "
            f"CPU while waiting: {cpu_used:.2f} s per 2 s"
        )
        assert all(a is not None and a["ok"] for a in answers), answers
        assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 10
        await wait_until(lambda: _answers(ready_url, 200), timeout=10)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
        await proxy.cut()
        stack.start("posts")
        await stack.wait_ready("posts")


async def _answers(url: str, status: int) -> bool:
    try:
        return await status_of(url) == status
    except (aiohttp.ClientError, TimeoutError):
        return False


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
