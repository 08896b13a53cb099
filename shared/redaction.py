"""What a parked command keeps of a secret: nothing. Secrets never rest.

A payload field marked `SECRET` in its model (shared/declarations.py; a password, later a refresh
token) and the `authorization` header are credentials. The runner delivers them to the handler and
nowhere else: before it parks a command in `<queue>.dead` it passes the headers and the body
through here, and while it handles one the values are scrubbed from every log line (shared/logs.py).

A parked message is one the runner could not trust to be what it says, so the body is redacted of
every field that *any* command declares secret, at any depth and whatever the capitalisation of its
name (`[{"Password": …}]` is no less a password for being malformed). A body that is not JSON
cannot be searched for fields, nor is one over the size limit parsed (that would hand whoever
publishes a way to make the service chew on any amount of JSON): it is kept only when the message
names a known command that has no secret field; otherwise (a login that is not JSON, a type nobody
declared) it is replaced by a note. The `x-redacted` header says what was taken out, so an operator reading the queue knows why a
replay of the message would be refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared import jsoncodec
from shared.commands import COMMANDS
from shared.envelope import AUTHORIZATION_HEADER
from shared.logs import REDACTED  # the one placeholder, in parked messages and log lines alike

__all__ = ["REDACTED", "REDACTED_HEADER", "SECRET_FIELDS", "UNREADABLE_BODY", "redact_body", "redact_headers", "secret_values"]

REDACTED_HEADER = "x-redacted"
#: What replaces a body that may hold a secret but cannot be parsed to find it.
UNREADABLE_BODY = b"[redacted: the body was not JSON (or too large to search) and may have held a secret]"
#: Every field any command declares secret, lower-cased: matched whatever the sender's capitalisation.
SECRET_FIELDS: frozenset[str] = frozenset(name.lower() for command in COMMANDS.values() for name in command.secret_fields)


def secret_values(payload: Any, fields: Iterable[str]) -> tuple[str, ...]:
    """The values of `fields` in a validated payload, to scrub from the log lines written meanwhile."""
    return tuple(value for name in fields if isinstance(value := getattr(payload, name, None), str) and value)


def _credential(name: str, value: Any) -> bool:
    if name.lower() == AUTHORIZATION_HEADER:
        return True
    # A bearer token under another name (`x-token: Bearer …`) is no less a credential.
    text = bytes(value).decode(errors="replace") if isinstance(value, bytes | bytearray) else value
    return isinstance(text, str) and text.strip().lower().startswith("bearer ")


def redact_headers(headers: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The headers with every credential replaced, and the names of those replaced."""
    taken = [name for name, value in headers.items() if _credential(name, value)]
    return {name: (REDACTED if name in taken else value) for name, value in headers.items()}, taken


def _redact(value: Any, taken: list[str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in SECRET_FIELDS:
                taken.append(key)
                out[key] = REDACTED
            else:
                out[key] = _redact(item, taken)
        return out
    if isinstance(value, list):
        return [_redact(item, taken) for item in value]
    return value


def redact_body(body: bytes, named: Iterable[str | None], *, max_bytes: int) -> tuple[bytes, list[str]]:
    """The body of a command to park, and what was taken out of it (`["body"]` when all of it).

    `named` are the command names the message gives (its type and routing key). An untouched body
    is returned byte for byte, so a replay of a message that held no secret is the message itself.
    """
    try:
        if len(body) > max_bytes:
            raise ValueError("too large to search")
        parsed = jsoncodec.loads(body)
    except ValueError:
        names = [name for name in named if name]
        keeps_no_secret = bool(names) and all(name in COMMANDS and not COMMANDS[name].secret_fields for name in names)
        return (body, []) if keeps_no_secret else (UNREADABLE_BODY, ["body"])
    taken: list[str] = []
    redacted = _redact(parsed, taken)
    return (jsoncodec.dumps(redacted), list(dict.fromkeys(taken))) if taken else (body, [])
