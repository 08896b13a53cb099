"""When the broker goes away: the gateway answers 503 with Retry-After at once and never hangs,
and both the gateway and the services come back by themselves when the broker returns.

The broker is taken away from one process at a time through a TCP proxy the test can cut, so the
machine's RabbitMQ keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.faults import BROKER_CUT, FaultWatch
from tests.support.proxy import CuttableProxy
from tests.support.stack import PACKAGES, ROOT, Stack, free_port

pytestmark = pytest.mark.fault


@dataclass
class ProxiedProcess:
    proxy: CuttableProxy
    process: subprocess.Popen[bytes]
    url: str


def proxied_amqp_url(stack: Stack, proxy: CuttableProxy, service: str) -> str:
    """`service`'s own AMQP_URL (its broker user), through the proxy."""
    parts = urllib.parse.urlsplit(stack.env_for(service)["AMQP_URL"])
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def start_behind_proxy(stack: Stack, package: str, port_variable: str) -> ProxiedProcess:
    upstream = urllib.parse.urlsplit(stack.env["AMQP_URL"])
    proxy = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 5672)
    await proxy.start()
    port = free_port()
    service = next(name for name, known in PACKAGES.items() if known == package)
    env = {**stack.env, "AMQP_URL": proxied_amqp_url(stack, proxy, service), port_variable: str(port), "RPC_TIMEOUT_SECONDS": "5"}
    log = open(stack.log_dir / f"{package}-proxied.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen([sys.executable, "-m", package], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    running = ProxiedProcess(proxy, process, f"http://127.0.0.1:{port}")
    await wait_for_status(running.url + "/readyz", 200, timeout=30)
    return running


async def wait_for_status(url: str, status: int, *, timeout: float, **kwargs: object) -> float:
    """Poll until `url` answers `status`; returns how long it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2), **kwargs) as response:  # type: ignore[arg-type]
                    if response.status == status:
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            assert time.monotonic() - started < timeout, f"{url} did not answer {status} within {timeout} s"
            await asyncio.sleep(0.2)


async def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait without blocking the event loop, which runs the proxy the process talks through."""
    process.terminate()
    code = await asyncio.to_thread(process.wait, 20)
    assert code == 0, f"the process exited with {code} on SIGTERM"


@pytest.fixture
async def gateway_behind_proxy(stack: Stack) -> AsyncIterator[ProxiedProcess]:
    running = await start_behind_proxy(stack, "gateway", "GATEWAY_PORT")
    yield running
    await terminate(running.process)
    await running.proxy.cut()


async def test_the_gateway_answers_503_at_once_and_recovers(faults: FaultWatch, gateway_behind_proxy: ProxiedProcess, new_user) -> None:
    faults.expect(*BROKER_CUT)
    user: User = await new_user("outage")
    url = gateway_behind_proxy.url
    async with aiohttp.ClientSession(base_url=url, trace_configs=[faults.trace_config()]) as http:
        async with http.get("/posts") as response:
            assert response.status == 200

        await gateway_behind_proxy.proxy.cut()
        await asyncio.sleep(0.3)
        for method, path, body in (("GET", "/posts", None), ("POST", "/posts", {"title": "t", "body": "b"})):
            started = time.monotonic()
            async with http.request(method, path, json=body, headers=user.auth) as response:
                elapsed = time.monotonic() - started
                assert response.status == 503, await response.text()
                assert response.content_type == "application/problem+json"
                assert int(response.headers["Retry-After"]) > 0
            assert elapsed < 1.0, f"{method} {path} took {elapsed:.2f} s during the outage"
        async with http.get("/readyz") as response:
            assert response.status == 503
        async with http.get("/healthz") as response:
            assert response.status == 200  # the process itself is fine

        await gateway_behind_proxy.proxy.restore()
        recovered_in = await wait_for_status(url + "/posts", 200, timeout=15)
        print(f"\ngateway recovered {recovered_in:.1f} s after the broker came back")
        async with http.post("/posts", json={"title": "after", "body": "b"}, headers=user.auth) as response:
            assert response.status == 201


async def test_a_request_in_flight_when_the_broker_goes_is_answered_promptly(
    stack: Stack, faults: FaultWatch, gateway_behind_proxy: ProxiedProcess, new_user, db: asyncpg.Pool, wait_until
) -> None:
    faults.expect(*BROKER_CUT)
    user: User = await new_user("in-flight")
    # Stop posts_service so the command waits in its queue, then cut the broker under the waiting call.
    stack.stop("posts")
    try:
        async with aiohttp.ClientSession(base_url=gateway_behind_proxy.url, trace_configs=[faults.trace_config()]) as http:
            call = asyncio.create_task(http.post("/posts", json={"title": "t", "body": "b"}, headers=user.auth))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await gateway_behind_proxy.proxy.cut()
            response = await call
            elapsed = time.monotonic() - started
            assert response.status == 503, await response.text()
            assert elapsed < 2.0, f"the waiting call took {elapsed:.2f} s to fail (timeout is 5 s)"
            response.release()
    finally:
        stack.start("posts")
        await stack.wait_ready("posts")

    async def executed() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id))

    # The command was confirmed by the broker before the cut: the caller saw a 503, but the
    # command is not lost, and runs once its service is back (a retry with the same
    # Idempotency-Key would be answered from its stored result).
    await wait_until(executed, timeout=10)


async def test_a_service_reconnects_and_resumes_consuming(
    stack: Stack, faults: FaultWatch, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    faults.expect(*BROKER_CUT)
    user: User = await new_user("resume")
    stack.stop("posts")  # only the proxied instance consumes posts.commands now
    proxied = await start_behind_proxy(stack, "posts_service", "POSTS_HTTP_PORT")
    try:
        await proxied.proxy.cut()
        # Commands published while the service is cut off wait in the durable queue.
        for i in range(20):
            await broker.command("create-post", {"title": f"queued {i}", "body": "b"}, token=user.token, reply=False)
        await asyncio.sleep(1)
        assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0
        await proxied.proxy.restore()
        started = time.monotonic()
        while await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) < 20:
            assert time.monotonic() - started < 20, "posts_service did not resume consuming"
            await asyncio.sleep(0.2)
        print(f"\nposts_service drained the queue {time.monotonic() - started:.1f} s after the broker came back")
        assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 20
    finally:
        await terminate(proxied.process)
        await proxied.proxy.cut()
        stack.start("posts")
        await stack.wait_ready("posts")
