"""Secrets never rest: a parked command keeps no password, and no log line holds one.

The contract: "a parked message keeps no secret (tokens, passwords, refresh tokens are
redacted)". A `login` or `register` the runner cannot accept (a malformed field, a bad or missing
message_id, a body that is not JSON, a type nobody declared) is answered and parked in
`auth.commands.dead`; before this test it was parked with the password in clear. The secret
fields are those the payload models mark `SECRET` (shared/declarations.py), and the same mark
shows them `writeOnly` in the published schemas.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any
from uuid import uuid4

import jsonschema_rs
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared import logs
from shared.asyncapi import build_document
from shared.commands import COMMANDS, Login, Refresh, Register
from shared.declarations import secret_fields
from shared.redaction import REDACTED, SECRET_FIELDS, UNREADABLE_BODY, redact_body, redact_headers
from tests.support.broker import BrokerProbe
from tests.test_malformed_input import assert_error_reply, header


def password() -> str:
    return f"pw-{uuid4().hex}"


def assert_no_secret(dead: AbstractIncomingMessage, secret: str) -> None:
    assert secret.encode() not in dead.body, f"the parked body still holds the password: {dead.body[:200]!r}"
    for name, value in (dead.headers or {}).items():
        text = bytes(value).decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)
        assert secret not in text, f"parked header {name!r} still holds the password"


def carrying(marker: str) -> Any:
    """Find the parked message by a marker in its body (the email stays; only secrets go)."""
    return lambda m: marker.encode() in m.body


# id: (command, message type, body, properties, expected status); {email} and {password} filled in.
PARKED: dict[str, tuple[str, Any, Any, dict[str, Any], int]] = {
    "login with a field it does not define": (
        "login",
        True,
        {"email": "{email}", "password": "{password}", "remember_me": True},
        {},
        422,
    ),
    "register with a malformed field": (
        "register",
        True,
        {"email": "{email}", "password": "{password}", "display_name": 5},
        {},
        422,
    ),
    "register with an invalid message_id": (
        "register",
        True,
        {"email": "{email}", "password": "{password}", "display_name": "Mallory"},
        {"message_id": "not a valid id"},
        400,
    ),
    "login without a message_id": ("login", True, {"email": "{email}", "password": "{password}"}, {"message_id": None}, 400),
    "login whose type differs from its routing key": ("login", "register", {"email": "{email}", "password": "{password}"}, {}, 422),
    "a capitalised Password inside a JSON array": ("login", True, [{"email": "{email}", "Password": "{password}"}], {}, 422),
}


def filled(value: Any, email: str, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace("{email}", email).replace("{password}", secret)
    if isinstance(value, dict):
        return {key: filled(item, email, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [filled(item, email, secret) for item in value]
    return value


@pytest.mark.parametrize("case", PARKED.values(), ids=list(PARKED))
async def test_a_parked_login_or_register_keeps_no_password(case, broker: BrokerProbe, db) -> None:
    command, message_type, body, properties, status = case
    email, secret = f"parked-{uuid4().hex}@example.com", password()
    await broker.dead_letters("auth.commands")

    reply = await broker.command(
        command,
        body=json.dumps(filled(body, email, secret)).encode(),
        message_type=message_type,
        properties=properties,
        bare="message_id" in properties,  # aio-pika would invent one for a message that has none
    )

    assert_error_reply(reply, status)
    dead = await broker.parked("auth.commands", carrying(email), timeout=3.0)
    assert header(dead, "x-dead-letter-reason"), "a parked command must say why"
    assert_no_secret(dead, secret)
    assert REDACTED in dead.body.decode(), "the field is kept, its value replaced"
    assert "password" in (header(dead, "x-redacted") or "").lower(), "the parked message says what was taken out"
    documented = build_document()["components"]["messages"]["dead-letter"]["headers"]
    assert jsonschema_rs.validator_for(documented).is_valid(dict(dead.headers or {})), "asyncapi.yaml describes what is parked"
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE email = $1", email) == 0


async def test_a_parked_refresh_keeps_no_refresh_token(broker: BrokerProbe) -> None:
    marker, secret = f"parked-{uuid4().hex}", f"rt-{uuid4().hex}{uuid4().hex}"
    await broker.dead_letters("auth.commands")
    reply = await broker.command("refresh", body=json.dumps({"refresh_token": secret, "note": marker}).encode())
    assert_error_reply(reply, 422)
    dead = await broker.parked("auth.commands", carrying(marker), timeout=3.0)
    assert_no_secret(dead, secret)
    assert REDACTED in dead.body.decode(), "the field is kept, its value replaced"
    assert "refresh_token" in (header(dead, "x-redacted") or "").lower()


async def test_a_login_that_is_not_json_is_parked_without_its_body(broker: BrokerProbe) -> None:
    """Fields cannot be found in a body that does not parse: for a command that has secret
    fields, the whole body is replaced by a note."""
    secret, message_id = password(), str(uuid4())
    await broker.dead_letters("auth.commands")

    reply = await broker.command("login", body=f"email=a@example.com&password={secret}".encode(), message_id=message_id)

    assert_error_reply(reply, 400)
    dead = await broker.parked("auth.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert_no_secret(dead, secret)
    assert dead.body == UNREADABLE_BODY
    assert header(dead, "x-redacted") == "body"


async def test_a_parked_command_with_no_secret_keeps_its_body(broker: BrokerProbe) -> None:
    """What declares no secret is parked as it came, so an operator can replay it."""
    message_id, raw = str(uuid4()), b'{"post_id": "not json'
    await broker.dead_letters("posts.commands")

    assert_error_reply(await broker.command("get-post", body=raw, message_id=message_id), 400)

    dead = await broker.parked("posts.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert dead.body == raw
    assert header(dead, "x-redacted") is None


# -- the declarations say which fields are secret -------------------------------------------------


@pytest.mark.unit
def test_passwords_are_declared_secret_and_documented_write_only() -> None:
    assert secret_fields(Login) == secret_fields(Register) == {"password"}
    assert secret_fields(Refresh) == {"refresh_token"}
    assert {name for name, command in COMMANDS.items() if command.secret_fields} == {"login", "register", "refresh"}
    assert {"password", "refresh_token"} <= SECRET_FIELDS
    schemas = build_document()["components"]["schemas"]
    for model, field in ((Login, "password"), (Register, "password"), (Refresh, "refresh_token")):
        assert schemas[model.__name__]["properties"][field]["writeOnly"] is True
        assert model.model_json_schema()["properties"][field]["writeOnly"] is True
    assert "writeOnly" not in schemas["Register"]["properties"]["email"]


@pytest.mark.unit
def test_redaction_of_bodies_and_headers() -> None:
    limit = 1000
    nested = json.dumps({"outer": [{"PASSWORD": "s3cret-value", "keep": "me"}, {"PASSWORD": "again"}]}).encode()
    body, taken = redact_body(nested, ("login",), max_bytes=limit)
    assert json.loads(body) == {"outer": [{"PASSWORD": REDACTED, "keep": "me"}, {"PASSWORD": REDACTED}]} and taken == ["PASSWORD"]
    untouched = b'{"title":  "spacing kept"}'
    assert redact_body(untouched, ("create-post",), max_bytes=limit) == (untouched, [])
    assert redact_body(b"not json s3cret", ("login",), max_bytes=limit) == (UNREADABLE_BODY, ["body"])
    assert redact_body(b"not json s3cret", ("nuke-everything",), max_bytes=limit) == (UNREADABLE_BODY, ["body"])
    assert redact_body(b"not json", ("create-post", "create-post"), max_bytes=limit) == (b"not json", [])
    too_large = json.dumps({"email": "a@example.com", "password": "s3cret", "display_name": "x" * limit}).encode()
    assert redact_body(too_large, ("register",), max_bytes=limit) == (UNREADABLE_BODY, ["body"]), "not parsed past the limit"
    headers, names = redact_headers({"Authorization": bytearray(b"Bearer abc"), "x-token": "bearer xyz", "x-request-id": "r-1", "n": 5})
    assert headers == {"Authorization": REDACTED, "x-token": REDACTED, "x-request-id": "r-1", "n": 5}
    assert names == ["Authorization", "x-token"]


@pytest.mark.unit
def test_a_hidden_value_never_reaches_a_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg and pydantic quote the values they refuse: an exception's text is scrubbed too."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure_logging("test", "INFO")
        secret = password()
        hidden = logs.hide([secret, "abc"])  # under four characters: left alone
        try:
            try:
                raise ValueError(f"invalid input for query argument $2: {secret!r}")
            except ValueError:
                logging.getLogger("t").exception("command failed", extra={"detail": {"value": secret}, "short": "abc"})
        finally:
            logs.unhide(hidden)
        logging.getLogger("t").warning(f"after: {secret}")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert secret not in json.dumps(first), first
    assert "[redacted]" in first["exception"] and first["detail"] == {"value": "[redacted]"} and first["short"] == "abc"
    assert secret in second["message"], "outside the command the value is no longer hidden"
