"""`GET /live` under load and faults, on a gateway of its own beside the session's stack.

That gateway has a small stream limit (300), a short heartbeat, and reaches the broker through a
TCP proxy the test can cut (tests/support/proxy.py), so the machine's RabbitMQ keeps serving the
rest. Shown here: heartbeats; a broker cut while streams are open ends in `event: reload` on each
once the feed is back, and later events still arrive; hundreds of streams at once all get an event
within a second, with the gateway's memory per stream measured and the 301st refused with 503;
a reader that never reads is dropped once its queue is full, counted, and the others go on.
Each test fails on any ERROR line in any process's log that its fault does not explain.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest

from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.faults import BROKER_CUT, FaultWatch
from tests.support.proxy import CuttableProxy
from tests.support.sse import live_streams
from tests.support.stack import ROOT, Stack, free_port

pytestmark = pytest.mark.fault

MAX_STREAMS = 300


@dataclass
class LiveGateway:
    proxy: CuttableProxy
    process: subprocess.Popen[bytes]
    url: str

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1))  # type: ignore[union-attr]

    async def metric(self, http: aiohttp.ClientSession, line: str) -> float:
        async with http.get(self.url + "/metrics") as response:
            text = await response.text()
        found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
async def gateway(stack: Stack) -> AsyncIterator[LiveGateway]:
    upstream = urllib.parse.urlsplit(stack.env["AMQP_URL"])
    proxy = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 5672)
    await proxy.start()
    own = urllib.parse.urlsplit(stack.env_for("gateway")["AMQP_URL"])  # the gateway's own broker user
    amqp_url = urllib.parse.urlunsplit(own._replace(netloc=f"{own.username}:{own.password}@127.0.0.1:{proxy.port}"))
    port = free_port()
    env = {
        **stack.env,
        "AMQP_URL": amqp_url,
        "GATEWAY_PORT": str(port),
        "LIVE_MAX_STREAMS": str(MAX_STREAMS),
        "LIVE_HEARTBEAT_SECONDS": "0.3",
    }
    log = open(stack.log_dir / "gateway-live.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    running = LiveGateway(proxy, process, f"http://127.0.0.1:{port}")
    try:
        await _until_live(running)
        yield running
    finally:
        process.terminate()
        code = await asyncio.to_thread(process.wait, 20)  # the proxy runs on this loop: do not block it
        await proxy.cut()
        assert code == 0, f"the gateway exited with {code} on SIGTERM"


async def _until_live(gateway: LiveGateway, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(gateway.url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the live gateway did not start"
            await asyncio.sleep(0.2)


@pytest.fixture
async def http(gateway: LiveGateway) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)  # hundreds of streams at once from one client
    async with aiohttp.ClientSession(base_url=gateway.url, connector=connector) as session:
        yield session


def post_created() -> dict[str, str]:
    return {"event_id": str(uuid4()), "occurred_at": datetime.now(UTC).isoformat(), "post_id": str(uuid4()), "author_id": str(uuid4())}


async def test_an_idle_stream_gets_heartbeats(faults: FaultWatch, http: aiohttp.ClientSession, wait_until: WaitUntil) -> None:
    async with live_streams(http, "/live", 1) as (stream,):

        async def beating() -> bool:
            return stream.comments.count("keep-alive") >= 2

        await wait_until(beating, timeout=2)
        assert not stream.ended


async def test_a_broker_cut_ends_in_reload_on_every_stream_and_events_go_on(
    faults: FaultWatch, http: aiohttp.ClientSession, gateway: LiveGateway, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    faults.expect(*BROKER_CUT)
    async with live_streams(http, "/live", 3) as streams:
        await gateway.proxy.cut()

        async def feed_down() -> bool:
            async with http.get("/readyz") as response:
                return response.status == 503

        await wait_until(feed_down, timeout=5)
        assert not any(s.find("reload") for s in streams)  # not yet: the feed is not back
        await gateway.proxy.restore()

        async def reloaded() -> bool:
            return all(s.find("reload") for s in streams)

        await wait_until(reloaded, timeout=15)
        for stream in streams:
            assert stream.find("reload")[0].id == ""  # a fresh start: the old ids mean nothing now
            assert not stream.ended

        later = post_created()
        await broker.event("post.created", later, as_process="posts")

        async def arrived() -> bool:
            return all(s.find("post.created", post_id=later["post_id"]) for s in streams)

        await wait_until(arrived, timeout=2)


async def test_hundreds_of_streams_all_get_an_event_within_a_second_and_the_limit_answers_503(
    faults: FaultWatch, http: aiohttp.ClientSession, gateway: LiveGateway, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    async def none_open() -> bool:
        return await gateway.metric(http, "gateway_live_streams") == 0

    await wait_until(none_open, timeout=5)  # a closed stream is noticed at the next sweep (a second)
    rss_before = gateway.rss_kib()
    async with live_streams(http, "/live", MAX_STREAMS) as streams:
        assert await gateway.metric(http, "gateway_live_streams") == MAX_STREAMS
        rss_open = gateway.rss_kib()
        async with http.get("/live") as refused:
            assert refused.status == 503
            assert refused.content_type == "application/problem+json"
            assert int(refused.headers["Retry-After"]) > 0
        assert await gateway.metric(http, "gateway_live_refused_total") >= 1

        event = post_created()
        started = time.monotonic()
        await broker.event("post.created", event, as_process="posts")

        async def everywhere() -> bool:
            return all(s.find("post.created", post_id=event["post_id"]) for s in streams)

        # Judged on when each stream's reader received it, not on when this loop looked: a poll of
        # every stream every few milliseconds took the CPU those readers needed on a loaded machine.
        await wait_until(everywhere, timeout=10.0, interval=0.1)
        latest = max(s.find("post.created", post_id=event["post_id"])[0].arrived for s in streams)
        assert latest - started < 1.0, f"the last of {MAX_STREAMS} streams had the event {latest - started:.3f} s after it was published"
        per_stream = (rss_open - rss_before) / MAX_STREAMS
        print(
            f"\n{MAX_STREAMS} streams: all had the event {latest - started:.3f} s after it was published; gateway RSS +{per_stream:.1f} KiB per stream"
        )
        # An open stream is a request, a response and a small queue: tens of KiB, never megabytes.
        assert per_stream < 256, f"{per_stream:.0f} KiB of gateway memory per open stream"

    await wait_until(none_open, timeout=5)


async def test_a_reader_that_never_reads_is_dropped_and_the_others_go_on(
    faults: FaultWatch, http: aiohttp.ClientSession, gateway: LiveGateway, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    async def none_open() -> bool:
        return await gateway.metric(http, "gateway_live_streams") == 0

    await wait_until(none_open, timeout=5)
    dropped_before = await gateway.metric(http, 'gateway_live_dropped_total{reason="slow_reader"}')
    host, port = urllib.parse.urlsplit(gateway.url).hostname, urllib.parse.urlsplit(gateway.url).port
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    stuck.connect((host, port))
    stuck.sendall(b"GET /live HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\r\n")
    try:
        async with live_streams(http, "/live", 1) as (reader,):

            async def both_open() -> bool:
                return await gateway.metric(http, "gateway_live_streams") == 2

            await wait_until(both_open, timeout=5)
            sent = 0
            while await gateway.metric(http, 'gateway_live_dropped_total{reason="slow_reader"}') == dropped_before:
                assert sent < 5000, "the reader that never reads was never dropped"
                for _ in range(200):
                    await broker.event("post.created", post_created(), as_process="posts")
                sent += 200
                await asyncio.sleep(0.2)
            print(f"\nthe stuck reader was dropped after at most {sent} events")
            assert await gateway.metric(http, "gateway_live_streams") == 1
            assert not reader.ended

            last = post_created()
            await broker.event("post.created", last, as_process="posts")

            async def arrived() -> bool:
                return bool(reader.find("post.created", post_id=last["post_id"]))

            await wait_until(arrived, timeout=5)
            assert len(reader.find("post.created")) >= sent  # the live reader missed nothing
    finally:
        stuck.close()


async def test_shutdown_ends_open_streams_at_once(
    faults: FaultWatch, http: aiohttp.ClientSession, gateway: LiveGateway, wait_until: WaitUntil
) -> None:
    """Last in the module: it stops the module's gateway. An open stream never ends by itself, so
    without the hub's on_shutdown hook the graceful shutdown would wait its whole timeout."""
    async with live_streams(http, "/live", 5) as streams:
        started = time.monotonic()
        gateway.process.terminate()
        code = await asyncio.to_thread(gateway.process.wait, 20)
        stopped_in = time.monotonic() - started
        assert code == 0
        assert stopped_in < 5, f"the gateway took {stopped_in:.1f} s to stop with streams open"

        async def all_ended() -> bool:
            return all(s.ended for s in streams)

        await wait_until(all_ended, timeout=2)
