"""The `/live` fan-out measurement: N open Server-Sent Events streams, one public event, how long
until every stream has it.

Not wrk: wrk measures requests, and here one request (a `POST /posts`) must reach N open
responses. One aiohttp session holds the N streams (a connector limit above N, streams opened
`OPEN_AT_ONCE` at a time so the gateway sees no connect storm); a stream counts as open once its
first bytes arrived (the `retry:` line or a heartbeat), not merely its headers. Then each event
is caused through the HTTP API, and every stream's latency runs from the moment the `POST` was
sent to the chunk that completed its `event: post.created` message with the new post's id. The
send, not the 2xx answer, starts the clock: the relay may publish before the reply gets back, and
a stream may well hear of a post before its author does.

Chunks are read as they come (`iter_any`), one wake-up per chunk rather than per line, so the
driver costs the shared machine as little CPU as it can.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench.broker_load import percentile
from bench.dataset import POST_BODY
from bench.sse import SseMessage, SseParser

LIVE_PATH = "/live"
POST_CREATED = "post.created"
STREAMS = 500
EVENTS = 5
OPEN_AT_ONCE = 50
OPEN_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
#: How long to wait for stragglers after a send: past the 1 s target, so a late stream is
#: reported with its latency rather than as missing.
DEADLINE_S = 5.0
#: Between two events, so a late delivery of one never overlaps the next.
PAUSE_S = 0.5
NO_LIVE = "GET /live answered 404: this gateway has no live stream (issue 13), fan-out not measured"

Say = Callable[[str], None]


@dataclass(frozen=True)
class EventDelivery:
    """One event: to how many of the open streams it came, and how fast (ms from the send)."""

    post_id: str
    streams: int  # open when the event was sent
    delivered: int
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    answer_ms: float = 0.0  # the POST's own round trip
    error: str | None = None

    @property
    def missing(self) -> int:
        return self.streams - self.delivered


@dataclass(frozen=True)
class FanoutResult:
    streams: int  # asked for
    opened: int
    open_s: float = 0.0
    #: why streams did not open or did not stay open: {"HTTP 503": 12, ...}
    failures: dict[str, int] = field(default_factory=dict)
    events: tuple[EventDelivery, ...] = ()
    #: set when nothing was measured, with the reason (a gateway without `/live`)
    skipped: str | None = None
    #: the gateway's resident memory before the streams opened and with all of them open
    gateway_rss_kb: dict[str, int] = field(default_factory=dict)

    @property
    def worst(self) -> EventDelivery | None:
        """The event that reached the fewest streams, and of those the slowest to reach its last."""
        return min(self.events, key=lambda e: (e.delivered - e.streams, -e.max_ms), default=None)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "worst": asdict(self.worst) if self.worst else None}


def post_id_of(message: SseMessage) -> str | None:
    """The post a `post.created` message is about (its public fields name it `post_id`)."""
    if message.event != POST_CREATED:
        return None
    try:
        data = json.loads(message.data)
    except ValueError:
        return None
    post_id = data.get("post_id") if isinstance(data, dict) else None
    return post_id if isinstance(post_id, str) else None


def account(post_id: str, sent_at: float, answered_at: float, arrivals: Mapping[int, float], streams: int) -> EventDelivery:
    """One event's figures from the loop times it was sent and answered and it reached each stream."""
    latencies = sorted((at - sent_at) * 1000 for at in arrivals.values())
    return EventDelivery(
        post_id=post_id,
        streams=streams,
        delivered=len(latencies),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else 0.0,
        answer_ms=(answered_at - sent_at) * 1000,
    )


@dataclass
class _Wait:
    streams: frozenset[int]
    missing: int
    done: asyncio.Event


class Board:
    """When each stream first heard of each post; lets the driver wait until all have."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[int, float]] = {}
        self._waits: dict[str, _Wait] = {}

    def arrived(self, post_id: str, stream: int, at: float) -> None:
        seen = self._seen.setdefault(post_id, {})
        if stream in seen:
            return  # a repeat (a replay after a reconnect) is not a second delivery
        seen[stream] = at
        wait = self._waits.get(post_id)
        if wait is not None and stream in wait.streams:
            wait.missing -= 1
            if wait.missing == 0:
                wait.done.set()

    async def wait_for(self, post_id: str, streams: frozenset[int], timeout: float) -> dict[int, float]:
        """The arrivals of `post_id` on `streams`, once all have it or `timeout` seconds passed."""
        seen = self._seen.setdefault(post_id, {})
        missing = len(streams - seen.keys())
        if missing and timeout > 0:
            wait = self._waits[post_id] = _Wait(streams, missing, asyncio.Event())
            try:
                async with asyncio.timeout(timeout):
                    await wait.done.wait()
            except TimeoutError:
                pass
            finally:
                del self._waits[post_id]
        return {stream: at for stream, at in seen.items() if stream in streams}


class LiveStream:
    """One open `GET /live`: reads chunks, tells the board of every `post.created` it hears."""

    def __init__(self, index: int, board: Board) -> None:
        self.index, self.board = index, board
        self.parser = SseParser()
        self.settled = asyncio.Event()  # first bytes came, or it failed
        self.opened = False
        self.status: int | None = None
        self.failure: str | None = None

    @property
    def alive(self) -> bool:
        return self.opened and self.failure is None

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.settled.set()

    async def run(self, session: aiohttp.ClientSession, url: str, gate: asyncio.Semaphore) -> None:
        """Open the stream and read it until cancelled; a failure is recorded, never raised."""
        loop = asyncio.get_running_loop()
        try:
            async with gate:  # released at the headers: the first bytes may wait for a heartbeat
                response = await session.get(url, headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.fail(f"connect error ({type(exc).__name__})")
            return
        async with response:
            self.status = response.status
            if response.status != 200:
                self.fail(f"HTTP {response.status}")
                return
            if response.content_type != "text/event-stream":
                self.fail(f"not an event stream ({response.content_type})")
                return
            try:
                async for chunk in response.content.iter_any():
                    at = loop.time()  # the chunk's arrival, before any parsing
                    if not self.opened:
                        self.opened = True
                        self.settled.set()
                    for message in self.parser.feed(chunk):
                        post_id = post_id_of(message)
                        if post_id is not None:
                            self.board.arrived(post_id, self.index, at)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.fail(f"read error ({type(exc).__name__})")
            else:
                self.fail("closed by the gateway")


async def _wait_settled(streams: Sequence[LiveStream], timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            for stream in streams:
                await stream.settled.wait()
    except TimeoutError:
        pass
    for stream in streams:
        if not stream.settled.is_set():
            stream.fail(f"no bytes within {timeout:g} s")


async def _one_event(http: aiohttp.ClientSession, token: str, board: Board, streams: list[LiveStream]) -> EventDelivery:
    loop = asyncio.get_running_loop()
    alive = frozenset(s.index for s in streams if s.alive)
    sent = loop.time()
    try:
        async with http.post("/posts", json=POST_BODY, headers={"Authorization": f"Bearer {token}"}) as response:
            answered = loop.time()
            if response.status != 201:
                return EventDelivery("", len(alive), 0, error=f"POST /posts answered {response.status}")
            post_id = str((await response.json())["id"])
    except aiohttp.ClientError as exc:
        return EventDelivery("", len(alive), 0, error=f"POST /posts failed ({type(exc).__name__})")
    arrivals = await board.wait_for(post_id, alive, DEADLINE_S - (loop.time() - sent))
    return account(post_id, sent, answered, arrivals, len(alive))


async def measure_fanout(
    http: aiohttp.ClientSession,
    gateway_url: str,
    token: str,
    *,
    streams: int = STREAMS,
    events: int = EVENTS,
    say: Say = print,
    gateway_rss_kb: Callable[[], int | None] = lambda: None,
) -> FanoutResult:
    """Open `streams` streams on `gateway_url`, then create `events` posts one after the other with
    `token` through `http` (a session whose base_url is the gateway) and time their delivery."""
    loop = asyncio.get_running_loop()
    board = Board()
    live = [LiveStream(n, board) for n in range(streams)]
    rss: dict[str, int] = {}
    if (before := gateway_rss_kb()) is not None:
        rss["before"] = before
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    # No total timeout: a stream is meant to stay open for the whole measurement.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=streams + 1)
    url = gateway_url.rstrip("/") + LIVE_PATH
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            # One stream first: a gateway without /live is told apart from one that refuses many.
            tasks.append(asyncio.create_task(live[0].run(session, url, gate)))
            await _wait_settled(live[:1], OPEN_TIMEOUT_S)
            if live[0].status == 404:
                return FanoutResult(streams, 0, failures={"HTTP 404": 1}, skipped=NO_LIVE, gateway_rss_kb=rss)
            started = loop.time()
            tasks += [asyncio.create_task(stream.run(session, url, gate)) for stream in live[1:]]
            await _wait_settled(live, OPEN_TIMEOUT_S)
            open_s = loop.time() - started
            opened = sum(stream.alive for stream in live)
            if (with_streams := gateway_rss_kb()) is not None:
                rss["open"] = with_streams
            say(f"    {opened} of {streams} streams open in {open_s:.1f} s")
            deliveries = []
            for number in range(1, events + 1):
                delivery = await _one_event(http, token, board, live)
                deliveries.append(delivery)
                say(
                    f"    event {number}: {delivery.error}"
                    if delivery.error
                    else f"    event {number}: {delivery.delivered}/{delivery.streams} streams, "
                    f"p50 {delivery.p50_ms:.1f} ms, p99 {delivery.p99_ms:.1f} ms, max {delivery.max_ms:.1f} ms"
                )
                await asyncio.sleep(PAUSE_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    failures = Counter(stream.failure for stream in live if stream.failure is not None)
    return FanoutResult(streams, opened, open_s, dict(failures), tuple(deliveries), gateway_rss_kb=rss)
