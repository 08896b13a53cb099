"""Structured logging with structlog: one JSON object per line on stderr.

Every line has `time` (ISO 8601, UTC), `level`, `service`, `logger` and `message`, then whatever is
bound to the current context, then the line's own extras. The runner binds `request_id` and
`command` while a service handles a message, and the gateway binds `request_id` while it handles
a request, so every line written meanwhile carries them: lines from this project's modules, which
log through the standard `logging` module, from structlog loggers, and from third-party
libraries alike, since all of them end in the one handler configured here.

Secrets never reach a line. While the runner handles a command it `hide`s the values of the
payload's secret fields (a password), and every line written meanwhile has them replaced by
`[redacted]` wherever they occur, an exception's text included (asyncpg, for one, quotes the
argument it could not encode). Values under four characters are left alone: replacing every
`a` in a line would make it unreadable, and no account can have so short a password.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog.typing import EventDict, Processor

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_FIRST = ("time", "level", "service", "logger", "message")

#: What `bind` returns and `unbind` takes back.
Bound = Mapping[str, contextvars.Token[Any]]

REDACTED = "[redacted]"
_MIN_HIDDEN = 4
_hidden: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("hidden_log_values", default=())
#: What `hide` returns and `unhide` takes back.
Hidden = contextvars.Token[tuple[str, ...]]


def bind(**values: Any) -> Bound:
    """Add `values` to every log line written in this context (this task and those it starts)."""
    return structlog.contextvars.bind_contextvars(**values)


def unbind(bound: Bound) -> None:
    structlog.contextvars.reset_contextvars(**bound)


def hide(values: Iterable[str]) -> Hidden:
    """Keep `values` out of every log line written in this context until `unhide`."""
    # Longest first, so a secret that contains another is replaced whole.
    found = sorted({v for v in values if len(v) >= _MIN_HIDDEN} | set(_hidden.get()), key=len, reverse=True)
    return _hidden.set(tuple(found))


def unhide(token: Hidden) -> None:
    _hidden.reset(token)


def _scrubbed(value: Any, hidden: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {key: _scrubbed(item, hidden) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item, hidden) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    if not any(secret in text for secret in hidden):
        return value
    for secret in hidden:
        text = text.replace(secret, REDACTED)
    return text


def _scrub_hidden(_logger: Any, _method: str, event: EventDict) -> EventDict:
    hidden = _hidden.get()
    return {key: _scrubbed(value, hidden) for key, value in event.items()} if hidden else event


def _add_extras(_logger: Any, _method: str, event: EventDict) -> EventDict:
    record: logging.LogRecord | None = event.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
    return event


def _add_trace_ids(_logger: Any, _method: str, event: EventDict) -> EventDict:
    from opentelemetry import trace  # only imported when tracing is on

    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event["trace_id"] = format(span.trace_id, "032x")
        event["span_id"] = format(span.span_id, "016x")
    return event


def _first_keys_first(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """Put the keys every line has at the front, so lines read alike."""
    return {**{key: event.pop(key) for key in _FIRST if key in event}, **event}


def configure_logging(service: str, level: str, *, trace_ids: bool = False) -> None:
    """Send every log line of the process, as JSON, to stderr. With `trace_ids`, lines written
    inside a traced operation also carry its `trace_id` and `span_id`."""

    def add_service(_logger: Any, _method: str, event: EventDict) -> EventDict:
        event["service"] = service
        return event

    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        add_service,
    ]
    if trace_ids:
        common.append(_add_trace_ids)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*common, _add_extras],  # lines from the standard logging module
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.EventRenamer("message"),
            structlog.processors.format_exc_info,
            _scrub_hidden,  # after the traceback is text, so it is scrubbed too
            _first_keys_first,
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # structlog loggers (`structlog.get_logger(__name__)`) hand their lines to the same handler.
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *common, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # aio-pika and aiormq are chatty at INFO during reconnects; their warnings still show.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_client_errors_are_warnings)


def _client_errors_are_warnings(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse (a bad header line, a bad method) at ERROR with a
    traceback: anyone could fill the error log, and an ERROR should mean our fault. The client's
    mistake becomes one WARNING line; anything else aiohttp logs stays as it is."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError) and record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"refused a request that is not valid HTTP: {exc.message or type(exc).__name__}"
        record.args = ()
        record.exc_info = record.exc_text = None
    return True
