"""The `/live` fan-out driver of `python -m bench` and the read side's targets, without the stack.

A small aiohttp server in the test plays the gateway as the contract describes `GET /live`
(`retry:`, comment heartbeats, `event:`/`id:`/`data:` messages, CRLF and split chunks) and
`POST /posts`; it can hold an event back from one stream, never send it to another, refuse a
stream, or have no `/live` at all, so the driver's accounting and the PASS/FAIL it leads to are
proved in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web

# bench/ runs from the checkout (`python -m bench`) and is not installed with the services.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import live_fanout, targets
from bench.live_fanout import EventDelivery, FanoutResult, account, measure_fanout, post_id_of
from bench.measurement import CaseResult, LoadResult
from bench.report import format_fanout
from bench.sse import SseMessage, SseParser
from bench.targets import check_targets, fanout_target
from tests.support.stack import free_port

pytestmark = pytest.mark.unit


# --- the SSE parser ---------------------------------------------------------------------------


def _feed_all(parser: SseParser, *chunks: bytes) -> list[SseMessage]:
    return [message for chunk in chunks for message in parser.feed(chunk)]


def test_sse_messages_comments_and_retry() -> None:
    parser = SseParser()
    messages = _feed_all(
        parser,
        b"retry: 3000\n: connected\n\n",
        b'event: post.created\nid: e-1\ndata: {"post_id": "p-1"}\n\n',
        b": heartbeat\n\n",
        b"data: first line\ndata:second line\ndata\n\n",  # one space dropped, none needed; a bare field is empty
    )
    assert parser.retry_ms == 3000
    assert parser.comments == 2
    assert messages == [
        SseMessage("post.created", '{"post_id": "p-1"}', "e-1"),
        SseMessage("message", "first line\nsecond line\n", "e-1"),  # the id stays until changed
    ]


def test_sse_line_ends_and_characters_split_across_chunks() -> None:
    parser = SseParser()
    body = 'event: post.edited\r\nid: e-2\rdata: {"title": "café"}\r\n\r\n'.encode()
    split = body.index("é".encode()) + 1  # inside the two bytes of é
    cr = body.index(b"\r\n\r\n") + 1  # between a CR and its LF
    chunks = [body[:5], body[5:split], body[split:cr], body[cr:]]
    assert _feed_all(parser, *chunks) == [SseMessage("post.edited", '{"title": "café"}', "e-2")]
    # A lone CR ends a line; the LF that opens the next chunk is not a second, blank line.
    assert _feed_all(parser, b"data: a\r", b"\ndata: b\r", b"\r") == [SseMessage("message", "a\nb", "e-2")]


def test_sse_ignores_what_a_browser_ignores() -> None:
    parser = SseParser()
    messages = _feed_all(parser, b"event: nothing\n\n", b"retry: soon\nid: a\0b\nfoo: bar\ndata: x\n\n")
    assert messages == [SseMessage("message", "x", "")]  # an event with no data is not dispatched
    assert parser.retry_ms is None


def test_post_id_of_a_message() -> None:
    assert post_id_of(SseMessage("post.created", '{"post_id": "p-1", "author_id": "u-1"}', "e")) == "p-1"
    assert post_id_of(SseMessage("post.deleted", '{"post_id": "p-1"}', "e")) is None
    assert post_id_of(SseMessage("post.created", "not json", "e")) is None
    assert post_id_of(SseMessage("post.created", '["p-1"]', "e")) is None


def test_latency_accounting() -> None:
    arrivals = {stream: 10.0 + stream / 1000 for stream in range(1, 101)}  # 1 ms to 100 ms after the send
    delivery = account("p", sent_at=10.0, answered_at=10.005, arrivals=arrivals, streams=102)
    assert (delivery.delivered, delivery.missing) == (100, 2)
    assert delivery.p50_ms == pytest.approx(50.0)
    assert delivery.p99_ms == pytest.approx(99.0)
    assert delivery.max_ms == pytest.approx(100.0)
    assert delivery.answer_ms == pytest.approx(5.0)
    assert account("p", 1.0, 1.0, {}, 3) == EventDelivery("p", 3, 0)


# --- the driver against a fake gateway -----------------------------------------------------------


class FakeGateway:
    """`GET /live` and `POST /posts` as the contract has them, with the faults a test asks for."""

    def __init__(
        self, *, live: bool = True, capacity: int | None = None, late: dict[int, float] | None = None, missing: tuple[int, ...] = ()
    ) -> None:
        self.port = free_port()
        self.live, self.capacity, self.late, self.missing = live, capacity, late or {}, missing
        self.streams: list[asyncio.Queue[bytes | None]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        if self.live:
            app.router.add_get("/live", self._live)
        app.router.add_post("/posts", self._create_post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        for queue in self.streams:
            queue.put_nowait(None)  # ends each handler, so cleanup waits for none
        if self._runner is not None:
            await self._runner.cleanup()

    async def _live(self, request: web.Request) -> web.StreamResponse:
        if self.capacity is not None and len(self.streams) >= self.capacity:
            raise web.HTTPServiceUnavailable(text="too many streams")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.streams.append(queue)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"retry: 2000\r\n: open\r\n\r\n")
        while (chunk := await queue.get()) is not None:
            try:
                await response.write(chunk)
            except ConnectionResetError:
                break
        return response

    async def _create_post(self, request: web.Request) -> web.Response:
        post_id = str(uuid4())
        data = json.dumps({"post_id": post_id, "author_id": str(uuid4())})
        message = f"event: post.created\r\nid: {uuid4()}\r\ndata: {data}\r\n\r\n".encode()
        noise = b': heartbeat\n\nevent: post.deleted\ndata: {"post_id": "someone else\'s"}\n\n'
        loop = asyncio.get_running_loop()
        for number, queue in enumerate(self.streams):
            if number in self.missing:
                continue
            # Sent before the answer, and in two pieces: the driver must join them, and count a
            # delivery that beats the POST's own reply.
            queue.put_nowait(noise + message[:17])
            if number in self.late:
                loop.call_later(self.late[number], queue.put_nowait, message[17:])
            else:
                queue.put_nowait(message[17:])
        return web.json_response({"id": post_id, "title": "t", "body": "b"}, status=201)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_fanout, "PAUSE_S", 0.0)
    monkeypatch.setattr(live_fanout, "DEADLINE_S", 1.6)


async def _measure(gateway: FakeGateway, streams: int, events: int) -> FanoutResult:
    await gateway.start()
    try:
        async with aiohttp.ClientSession(base_url=gateway.url) as http:
            rss = iter([1000, 1000 + 4 * streams])
            return await measure_fanout(
                http, gateway.url, "token", streams=streams, events=events, say=lambda _: None, gateway_rss_kb=lambda: next(rss)
            )
    finally:
        await gateway.stop()


@pytest.fixture
async def on_time(quick: None) -> AsyncIterator[FanoutResult]:
    yield await _measure(FakeGateway(), streams=20, events=2)


async def test_every_stream_hears_every_event(on_time: FanoutResult, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (on_time.opened, on_time.failures, on_time.skipped) == (20, {}, None)
    assert [(e.delivered, e.streams, e.error) for e in on_time.events] == [(20, 20, None)] * 2
    assert all(0 < e.p50_ms <= e.p99_ms <= e.max_ms < 1000 for e in on_time.events)
    assert on_time.gateway_rss_kb == {"before": 1000, "open": 1080}
    # 20 streams cannot prove the 500 of the target, and nothing failed: not measured.
    assert fanout_target(on_time).status == "SKIP"
    monkeypatch.setattr(targets, "FANOUT_STREAMS", 20)
    assert fanout_target(on_time).status == "PASS"
    text = format_fanout(on_time)
    assert "20 of 20 streams open" in text and "(4.0 kB per stream)" in text and "event 2: 20/20 streams" in text
    assert json.loads(json.dumps(on_time.to_json()))["worst"]["delivered"] == 20


async def test_a_late_and_a_missing_stream_fail_the_target(quick: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fanout = await _measure(FakeGateway(late={3: 1.1}, missing=(7,)), streams=12, events=1)
    [event] = fanout.events
    assert (fanout.opened, event.streams, event.delivered, event.missing) == (12, 12, 11, 1)
    assert 1100 <= event.max_ms < 1600  # the late one, reported with its latency
    assert event.p50_ms < 500
    monkeypatch.setattr(targets, "FANOUT_STREAMS", 12)
    target = fanout_target(fanout)
    assert target.status == "FAIL"
    assert "reached 11 of 12 streams" in target.detail


async def test_a_late_stream_alone_fails_the_target(quick: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fanout = await _measure(FakeGateway(late={0: 1.1}), streams=5, events=1)
    assert fanout.events[0].delivered == 5
    monkeypatch.setattr(targets, "FANOUT_STREAMS", 5)
    target = fanout_target(fanout)
    assert target.status == "FAIL" and "the last after 11" in target.detail


async def test_refused_streams_are_counted_and_fail_the_target(quick: None) -> None:
    fanout = await _measure(FakeGateway(capacity=8), streams=10, events=1)
    assert (fanout.opened, fanout.failures) == (8, {"HTTP 503": 2})
    assert fanout.events[0].delivered == fanout.events[0].streams == 8
    target = fanout_target(fanout)
    assert target.status == "FAIL" and "8 of 10 streams open (2 HTTP 503)" in target.detail


async def test_a_gateway_without_live_is_skipped_and_fails_the_target() -> None:
    fanout = await _measure(FakeGateway(live=False), streams=500, events=5)
    assert fanout.skipped is not None and "404" in fanout.skipped
    assert fanout.events == ()
    assert format_fanout(fanout).startswith("/live fan-out: SKIPPED: GET /live answered 404")
    target = fanout_target(fanout)
    assert (target.status, target.detail) == ("FAIL", live_fanout.NO_LIVE)


# --- the verdicts ------------------------------------------------------------------------------


def _fanout(*max_ms: float, streams: int = 500, delivered: int = 500, opened: int = 500) -> FanoutResult:
    events = tuple(EventDelivery(f"p{n}", opened, delivered, p50_ms=m / 2, p99_ms=m, max_ms=m) for n, m in enumerate(max_ms))
    return FanoutResult(streams, opened, 1.0, {} if opened == streams else {"HTTP 503": streams - opened}, events)


def test_fanout_verdicts() -> None:
    assert fanout_target(None).status == "SKIP"
    assert fanout_target(_fanout(300, 1000)).status == "PASS"
    late = fanout_target(_fanout(300, 1001))
    assert late.status == "FAIL" and "max 1001 ms" in late.detail
    assert fanout_target(_fanout(300, delivered=499)).status == "FAIL"
    assert fanout_target(_fanout(300, opened=499, delivered=499)).status == "FAIL"
    assert fanout_target(FanoutResult(500, 500)).status == "FAIL"  # no event sent
    failed = FanoutResult(500, 500, events=(EventDelivery("", 500, 0, error="POST /posts answered 503"),))
    assert fanout_target(failed) == targets.Target(fanout_target(None).name, "FAIL", "POST /posts answered 503")
    small = fanout_target(_fanout(300, streams=50, delivered=50, opened=50))
    assert small.status == "SKIP" and small.detail.startswith("only 50 streams asked for")


def _load(case: str, concurrency: int, rps: float, p99: float) -> CaseResult:
    load = LoadResult(requests=int(rps * 10), duration_s=10.0, p50_ms=1.0, p95_ms=p99 / 2, p99_ms=p99, errors={})
    return CaseResult(case, case, concurrency, load, {}, {})


def _cached(results: list[CaseResult]) -> dict[str, tuple[str, str]]:
    return {t.name: (t.status, t.detail) for t in check_targets(results, {}) if t.name.startswith("GET /posts/{id} (cached)")}


def test_cached_read_verdicts() -> None:
    ratio, p99 = "GET /posts/{id} (cached) >= 3x echo at c=64", "GET /posts/{id} (cached) p99 <= 50 ms at c=64"
    passing = _cached([_load("echo", 64, 1000, 40), _load("get_post", 64, 3000, 50)])
    assert passing == {ratio: ("PASS", "3000 / 1000 req/s = 3.00x"), p99: ("PASS", "p99 50.0 ms")}
    failing = _cached([_load("echo", 64, 1000, 40), _load("get_post", 64, 2999, 50.1)])
    assert (failing[ratio][0], failing[p99][0]) == ("FAIL", "FAIL")
    errors = CaseResult("get_post", "get_post", 64, LoadResult(50000, 10.0, 1.0, 5.0, 10.0, {"non2xx": 7}), {}, {})
    assert _cached([_load("echo", 64, 1000, 40), errors])[ratio] == ("FAIL", "5000 / 1000 req/s = 5.00x, 7 errors")
    # The same run's echo is the yardstick: without it, or at another concurrency, nothing is judged.
    assert {status for status, _ in _cached([_load("get_post", 64, 5000, 10)]).values()} == {"SKIP", "PASS"}
    assert _cached([_load("get_post", 64, 5000, 10)])[ratio][0] == "SKIP"
    assert {status for status, _ in _cached([_load("echo", 64, 1000, 40), _load("get_post", 16, 5000, 10)]).values()} == {"SKIP"}
