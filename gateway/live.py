"""`GET /live`: the public events as Server-Sent Events, to every open stream of this replica.

The hub is a listener of the event feed (gateway/event_feed.py). Each event becomes one SSE
message (`event:` its routing key, `id:` its event_id, `data:` its public fields) queued on every
open stream at once; each stream's own writer sends it. Nothing here waits for a reader: a stream
whose bounded queue is full is a slow reader and is dropped (its connection aborted), so one stuck
client can never grow the gateway's memory nor hold up the others.

A reconnecting client sends `Last-Event-ID`; what it missed is replayed from the last `WINDOW`
events. When that id is not in the window, or the feed had a gap since (it went down: events may
have been lost), the client gets `event: reload` instead and must read everything again; every
open stream gets one when the feed comes back.

A client that goes away is noticed within `SWEEP_SECONDS` (the hub looks at every stream's
connection that often), not at the stream's next write, which on an idle stream is the next
heartbeat: until then it would still count in the open-streams gauge and against LIVE_MAX_STREAMS,
and a burst of reconnecting pages would be refused for the streams they had just left.

Memory per stream is bounded: at most `QUEUE_SIZE` queued messages, a user-space write buffer of
`WRITE_BUFFER_BYTES` and a kernel send buffer of `SEND_BUFFER_BYTES` (fixed, so the kernel's
autotuning cannot give an idle reader megabytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import cast

from aiohttp import web

from gateway.event_feed import FeedEvent
from gateway.metrics import GatewayMetrics
from shared import jsoncodec
from shared.errors import ServiceUnavailable

#: Events kept for replay to a client that reconnects with Last-Event-ID.
WINDOW = 1000
#: Messages one stream may have waiting; a reader this far behind is dropped.
QUEUE_SIZE = 64
#: Above this many bytes written but not yet taken by the kernel, the stream's writer waits.
WRITE_BUFFER_BYTES = 16 * 1024
#: The kernel's send buffer for a stream's socket (the kernel doubles it for bookkeeping).
SEND_BUFFER_BYTES = 32 * 1024
#: How long a client waits before reconnecting (the SSE `retry:` hint), in milliseconds.
RETRY_MS = 1000
#: How long shutdown lets streams end by themselves before it aborts the ones still writing.
SHUTDOWN_GRACE_SECONDS = 1.0
#: How often the hub ends the streams whose client has gone (one pass over them all, no wake-up
#: per stream): the longest a departed client still counts as an open stream.
SWEEP_SECONDS = 1.0

HEARTBEAT = b": keep-alive\n\n"


def sse_message(event: str, data: bytes, *, event_id: str | None) -> bytes:
    """One SSE message; `event_id=""` clears the client's last event id (a fresh start)."""
    id_line = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return b"event: " + event.encode() + b"\n" + id_line + b"data: " + data + b"\n\n"


def reload_message(reason: str, *, event_id: str) -> bytes:
    return sse_message("reload", jsoncodec.dumps({"reason": reason}), event_id=event_id)


class StreamEnded(Exception):
    """The hub ended the stream: the gateway is shutting down."""


class Stream:
    """One open `GET /live`: its bounded queue of messages, and its connection to drop it by."""

    def __init__(self, transport: asyncio.BaseTransport | None, backlog: list[bytes]) -> None:
        self._transport = transport
        #: What the client missed (the window's own messages, shared, not copied): sent first, and
        #: outside the queue's bound, or a long replay would get its reader dropped at once.
        self._backlog = backlog
        self._pending: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._ended = False
        if backlog:
            self._wake.set()

    def offer(self, message: bytes) -> bool:
        """Queue `message`; False when the queue is full (the caller drops the stream)."""
        if len(self._pending) >= QUEUE_SIZE:
            return False
        self._pending.append(message)
        self._wake.set()
        return True

    def end(self) -> None:
        self._ended = True
        self._wake.set()

    @property
    def gone(self) -> bool:
        """Whether the client's connection has closed (seen without writing to it)."""
        return self._transport is not None and self._transport.is_closing()

    def abort(self) -> None:
        """Close the connection at once, unsent data and all: the writer's wait fails."""
        self._ended = True
        self._wake.set()
        if self._transport is not None:
            cast(asyncio.Transport, self._transport).abort()

    async def take(self, timeout: float) -> list[bytes]:
        """What is queued (all of it, one write), or [] when `timeout` passed with nothing."""
        if not self._pending and not self._backlog and not self._ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        if self._ended:
            raise StreamEnded
        self._wake.clear()
        taken, self._backlog = [*self._backlog, *self._pending], []
        self._pending.clear()
        return taken


class LiveHub:
    """A feed listener that fans each public event out to the open streams (`GET /live`)."""

    def __init__(self, metrics: GatewayMetrics, *, heartbeat_seconds: float, max_streams: int) -> None:
        self._metrics = metrics
        self._heartbeat = heartbeat_seconds
        self._max_streams = max_streams
        self._streams: set[Stream] = set()
        #: The last WINDOW messages as (event_id, message), oldest first, for replay.
        self._recent: deque[tuple[str, bytes]] = deque(maxlen=WINDOW)
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ending the streams of departed clients (see the module's docstring)."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="live-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()

    def sweep(self) -> None:
        """End every stream whose client has gone; its writer then returns."""
        for stream in list(self._streams):
            if stream.gone:
                self._close(stream)
                stream.end()

    # -- the feed's side (FeedListener) --------------------------------------------------------

    def event(self, event: FeedEvent) -> None:
        message = sse_message(event.key, event.json(), event_id=event.event_id)
        self._recent.append((event.event_id, message))
        self._fan_out(message, "event")

    def down(self) -> None:
        """Nothing to tell yet: events may be lost from now on, which `up` makes the streams hear."""

    def up(self) -> None:
        # Whatever was published while the feed was down is lost: the window no longer runs up to
        # now, so no replay may start from it, and every open stream must read everything again.
        # The reload clears the client's last id, so its next reconnect is a fresh start.
        self._recent.clear()
        self._fan_out(reload_message("the event feed was interrupted", event_id=""), "reload")

    def _fan_out(self, message: bytes, kind: str) -> None:
        delivered = 0
        for stream in list(self._streams):
            if stream.offer(message):
                delivered += 1
            else:
                self._drop(stream, "slow_reader")
        if delivered:
            self._metrics.live_messages.labels(kind).inc(delivered)

    # -- the streams' side --------------------------------------------------------------------

    def open_stream(self, transport: asyncio.BaseTransport | None, last_event_id: str | None) -> Stream:
        """Register a stream with what it missed queued first; raises when the hub is full.

        Synchronous from the window's read to the registration, so no event falls in between."""
        if self._closing:
            raise ServiceUnavailable("The gateway is shutting down", retry_after=1)
        if len(self._streams) >= self._max_streams:
            self._metrics.live_refused.inc()
            raise ServiceUnavailable("Too many live streams are open; try again later", retry_after=5)
        backlog: list[bytes] = []
        if last_event_id:
            ids = [event_id for event_id, _ in self._recent]
            if last_event_id in ids:
                backlog = [message for _, message in list(self._recent)[ids.index(last_event_id) + 1 :]]
                self._metrics.live_messages.labels("replay").inc(len(backlog))
            else:
                newest = self._recent[-1][0] if self._recent else ""
                backlog = [reload_message("Last-Event-ID is not in the recent window", event_id=newest)]
                self._metrics.live_messages.labels("reload").inc()
        stream = Stream(transport, backlog)
        self._streams.add(stream)
        self._metrics.live_streams.set(len(self._streams))
        return stream

    def _close(self, stream: Stream) -> None:
        self._streams.discard(stream)
        self._metrics.live_streams.set(len(self._streams))

    def _drop(self, stream: Stream, reason: str) -> None:
        self._close(stream)
        stream.abort()
        self._metrics.live_dropped.labels(reason).inc()

    async def close(self) -> None:
        """End every stream (an `on_shutdown` hook): graceful shutdown must not wait on them."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for stream in list(self._streams):
            stream.end()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE_SECONDS
        while self._streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self._streams):
            self._drop(stream, "shutdown")  # a reader too slow to take the end of its stream

    async def serve(self, request: web.Request, *, request_id: str) -> web.StreamResponse:
        stream = self.open_stream(request.transport, request.headers.get("Last-Event-ID"))
        try:
            # X-Request-ID here: the middleware's is set after the handler, too late for a stream.
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-ID": request_id}
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", **headers})
            _bound_buffers(request.transport)
            await response.prepare(request)
            # The retry hint, and a first line so proxies and clients see the stream is open.
            await response.write(b"retry: " + str(RETRY_MS).encode() + b"\n: live\n\n")
            while True:
                messages = await stream.take(self._heartbeat)
                if not messages:
                    self._metrics.live_messages.labels("heartbeat").inc()
                await response.write(b"".join(messages) or HEARTBEAT)
        except StreamEnded:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        except ConnectionError:
            return response  # the client went away, or the hub dropped it: nothing left to say
        finally:
            self._close(stream)


def _bound_buffers(transport: asyncio.BaseTransport | None) -> None:
    """Fix what a stream may hold in user space and in the kernel (see the module's docstring)."""
    if transport is None:
        return
    # Cast, not isinstance: uvloop's transports do not subclass asyncio's, yet have these methods.
    cast(asyncio.Transport, transport).set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
