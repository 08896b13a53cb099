"""A Server-Sent Events parser for the `/live` fan-out driver: bytes in, messages out.

It follows the WHATWG event-stream rules a browser applies, so the bench hears what the web UI
would: lines end in CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the
next are one line end); `:` starts a comment (heartbeats); `field: value` loses one leading
space; `data:` lines join with LF; a blank line dispatches a message if it has data; `id:` is
remembered until changed, and `retry:` takes digits only. Bytes come in whatever chunks TCP
delivers, so a multi-byte character split across two chunks is decoded whole.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SseMessage:
    event: str  # "message" when the server sent no `event:` line
    data: str
    id: str  # the last `id:` seen on the stream, as a browser's lastEventId


class SseParser:
    """Feed it the body's chunks; each `feed` returns the messages that chunk completed."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next is the same line end
        self._event = ""
        self._data: list[str] = []
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SseMessage]:
        text = self._decoder.decode(chunk)
        if self._skip_lf and text:
            text = text[1:] if text[0] == "\n" else text
            self._skip_lf = False
        if not text:
            return []
        buffer = self._pending + text
        *lines, self._pending = _LINE_END.split(buffer)
        self._skip_lf = buffer.endswith("\r")
        messages = []
        for line in lines:
            message = self._line(line)
            if message is not None:
                messages.append(message)
        return messages

    def _line(self, line: str) -> SseMessage | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        # Any other field, and an `id` with a NUL or a `retry` not all digits, is ignored, as a browser does.
        return None

    def _dispatch(self) -> SseMessage | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseMessage(event, "\n".join(data), self.last_event_id)
