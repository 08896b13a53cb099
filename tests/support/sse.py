"""A Server-Sent Events reader for tests: opens `GET /live` and keeps every message it receives.

It parses the stream as a browser's EventSource does (fields `event`, `id`, `data`, `retry`;
comment lines starting with `:`), and notes when each message arrived, so a test can say "within
a second" about what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class SseMessage:
    event: str
    id: str | None
    data: str
    arrived: float

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseStream:
    response: aiohttp.ClientResponse
    messages: list[SseMessage] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    raw: bytearray = field(default_factory=bytearray)
    ended: bool = False
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.response.close()

    async def _read(self) -> None:
        event, event_id = "message", None
        data: list[str] = []
        try:
            async for line in self.response.content:
                self.raw.extend(line)
                text = line.decode().rstrip("\n").rstrip("\r")
                if not text:
                    if data or event != "message" or event_id is not None:
                        self.messages.append(SseMessage(event, event_id, "\n".join(data), time.monotonic()))
                    event, event_id, data = "message", None, []
                elif text.startswith(":"):
                    self.comments.append(text[1:].strip())
                else:
                    name, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "id":
                        event_id = value
                    elif name == "data":
                        data.append(value)
                    elif name == "retry":
                        self.retry = int(value)
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.ended = True

    def find(self, event: str, **fields: Any) -> list[SseMessage]:
        """The messages `event` whose data has `fields`."""
        return [m for m in self.messages if m.event == event and all(m.json().get(k) == v for k, v in fields.items())]


async def open_stream(http: aiohttp.ClientSession, url: str, *, last_event_id: str | None = None) -> SseStream:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = await http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert response.status == 200, await response.text()
    stream = SseStream(response)
    stream.start()
    return stream


@asynccontextmanager
async def live_streams(http: aiohttp.ClientSession, url: str, count: int, **options: Any) -> AsyncIterator[list[SseStream]]:
    """`count` open streams for the block, each already past its first message (so registered)."""
    streams: list[SseStream] = []
    try:
        streams.extend(await asyncio.gather(*(open_stream(http, url, **options) for _ in range(count))))
        deadline = time.monotonic() + 10
        while not all(s.retry is not None or s.messages for s in streams):
            assert time.monotonic() < deadline, "the streams did not start"
            await asyncio.sleep(0.02)
        yield streams
    finally:
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.close()
