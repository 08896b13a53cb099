"""The message envelope: how a command, a reply and its metadata look on the wire.

A command is a JSON body with `content_type`, `message_id`, `type` (the command name), and
optionally `reply_to`/`correlation_id`; the caller's token rides in the `authorization` header and
nowhere else. A reply is `{"ok": true, "result": ...}` or `{"ok": false, "error": {...}}`.
While a service processes a message, `current_message()` gives its metadata (the request id for
logs, the client address for rate limits) without threading it through every call.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aio_pika

from shared import jsoncodec
from shared.errors import AppError

CONTENT_TYPE = "application/json"
AUTHORIZATION_HEADER = "authorization"
REQUEST_ID_HEADER = "x-request-id"
CLIENT_ADDRESS_HEADER = "x-client-address"
CLIENT_USER_AGENT_HEADER = "x-client-user-agent"
#: What only the gateway knows about an HTTP client, so what services believe only from it.
GATEWAY_ONLY_HEADERS = (CLIENT_ADDRESS_HEADER, CLIENT_USER_AGENT_HEADER)
#: The longest user agent kept: enough to tell a browser and its platform, and a bound on what a
#: client can make a service store.
USER_AGENT_MAX_LENGTH = 256


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a service knows about the message it is handling, besides the payload."""

    command: str
    message_id: str | None
    request_id: str
    client_address: str | None = None
    client_user_agent: str | None = None


_current: contextvars.ContextVar[MessageContext | None] = contextvars.ContextVar("current_message", default=None)


def current_message() -> MessageContext | None:
    return _current.get()


def set_current_message(ctx: MessageContext | None) -> contextvars.Token[MessageContext | None]:
    return _current.set(ctx)


def reset_current_message(token: contextvars.Token[MessageContext | None]) -> None:
    _current.reset(token)


def encode(value: Any) -> bytes:
    return jsoncodec.dumps(value)


def ok_reply(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def error_reply(error: AppError) -> bytes:
    return encode({"ok": False, "error": error.to_dict()})


def build_command(
    command: str,
    payload: dict[str, Any],
    *,
    token: str | None = None,
    message_id: str | None = None,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    request_id: str | None = None,
    client_address: str | None = None,
    client_user_agent: str | None = None,
    expiration: float | None = None,
    user_id: str | None = None,
) -> aio_pika.Message:
    """A command message as the contract defines it; persistent, so a broker restart keeps it.
    `user_id`: the publishing connection's user (RabbitMQ refuses any other), which is how a
    service knows the gateway sent the `x-client-address` and `x-client-user-agent`."""
    headers: dict[str, Any] = {}
    if token is not None:
        headers[AUTHORIZATION_HEADER] = f"Bearer {token}"
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if client_address is not None:
        headers[CLIENT_ADDRESS_HEADER] = client_address
    if client_user_agent is not None:
        headers[CLIENT_USER_AGENT_HEADER] = client_user_agent
    return aio_pika.Message(
        encode(payload),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id or str(uuid4()),
        type=command,
        reply_to=reply_to,
        correlation_id=correlation_id,
        headers=headers,
        expiration=expiration,
        user_id=user_id,
    )


#: What a message_id may be (the gateway's Idempotency-Key becomes one): visible ASCII, 1 to 200.
MESSAGE_ID = re.compile(r"[!-~]{1,200}")
#: What a request id may be when it is carried into logs and the audit trail.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_message_id(value: str | None) -> bool:
    return value is not None and MESSAGE_ID.fullmatch(value) is not None


def request_id_for(offered: str | None, message_id: str | None) -> str:
    """The request id to log under: the sender's if it is sane, else the message id, else a new one."""
    if offered is not None and REQUEST_ID.fullmatch(offered):
        return offered
    if message_id is not None and REQUEST_ID.fullmatch(message_id):
        return message_id
    return uuid4().hex


class HeaderNotText(ValueError):
    """A header is there but is not text: neither a string nor a byte array of UTF-8."""

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} header must be UTF-8 text")
        self.name = name


def header_text(headers: dict[str, Any] | None, name: str) -> str | None:
    """A header as text, or None when it is absent; HeaderNotText when it cannot be read as text.

    An AMQP long string arrives as str (or as bytes when it is not UTF-8); Node's Buffer, Go's
    []byte and pika's bytes are sent as an AMQP byte array, which arrives as a bytearray. The
    contract reads both as UTF-8, so a client's choice of string type changes nothing.
    """
    value = (headers or {}).get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderNotText(name) from None
    raise HeaderNotText(name)  # a number, a table, a timestamp: no header the runner reads is one


def bounded_user_agent(value: str | None) -> str | None:
    """A user agent as it may be kept and shown: printable characters only (no control character
    reaches a log line or the UI), at most USER_AGENT_MAX_LENGTH of them; None when nothing is left."""
    if value is None:
        return None
    printable = "".join(ch for ch in value if ch.isprintable())[:USER_AGENT_MAX_LENGTH].strip()
    return printable or None


def header_hint(headers: dict[str, Any] | None, name: str) -> str | None:
    """A header that only informs (a request id for the logs, the client's address for the login
    rate limit): one that is not text is treated as absent rather than refusing the command."""
    try:
        return header_text(headers, name)
    except HeaderNotText:
        return None
