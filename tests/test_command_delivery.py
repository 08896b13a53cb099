"""How commands travel: one that waited in a queue past its token's expiry is refused when it is
finally taken, and one that no queue would take is an error the caller sees, not silence."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.parse
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from shared.tokens import LEEWAY_SECONDS
from tests.support.accounts import User, token_claims
from tests.support.broker import BrokerProbe
from tests.support.forge import TokenForge
from tests.support.stack import ROOT, Stack, free_port


async def test_a_token_that_expires_while_its_command_waits_is_refused(
    stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, forge: TokenForge, new_user
) -> None:
    user: User = await new_user("queued")
    claims = token_claims(user.token)
    now = int(time.time())
    # A genuine token of a live session (real key, real sub and sid) that expires in a second.
    token = forge.sign(forge.claims(claims["sub"], claims["sid"], iat=now, exp=now + 1))
    stack.stop("posts")
    try:
        reply = asyncio.create_task(broker.command("create-post", {"title": "stale", "body": "b"}, token=token, timeout=60))
        await asyncio.sleep(1 + LEEWAY_SECONDS + 1)  # past expiry and the clock-skew leeway
    finally:
        stack.start("posts")
        await stack.wait_ready("posts")
    answer = await reply
    assert answer is not None and answer["error"]["status"] == 401, answer
    assert "expired" in answer["error"]["detail"]
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to make an empty vhost")
async def test_a_command_no_queue_takes_is_a_503_at_once(stack: Stack) -> None:
    vhost = f"zt_empty_{uuid4().hex[:8]}"
    parts = urllib.parse.urlsplit(stack.env["AMQP_URL"])
    if parts.hostname not in ("127.0.0.1", "localhost"):
        pytest.skip("the broker is not local")
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    env = {
        **stack.env,
        "AMQP_URL": urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", "")),
        "GATEWAY_PORT": str(port),
        # The admin, the only user of the empty vhost, stands in for the gateway's and declares.
        "BROKER_USER_GATEWAY": parts.username or "guest",
        "BROKER_TOPOLOGY": "declare",
    }
    gateway = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 20
            while True:  # until the gateway is up and linked to the (empty) broker vhost
                try:
                    async with http.get("/readyz") as response:
                        body = await response.json()
                        if "unreachable" not in str(body):
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not come up"
                await asyncio.sleep(0.2)
            started = time.monotonic()
            async with http.get("/posts") as response:
                elapsed = time.monotonic() - started
                problem = await response.json()
            assert response.status == 503, problem
            assert "No service is accepting 'list-posts'" in problem["detail"]
            assert elapsed < 2, f"an unroutable command took {elapsed:.1f} s to fail"
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 20)
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)
