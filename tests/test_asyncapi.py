"""asyncapi.yaml describes the broker exactly as the code and the contract define it.

- the committed file is what `python -m shared.asyncapi` generates, so it cannot drift from the models;
- every command and event of the contract is in it, with the contract's fields, header and properties;
  the AMQP properties sit in the message's `bindings.amqp` (never as headers), and what it calls
  required is what the runner refuses a message without (message_id: tests/test_command_envelope.py);
- it is a structurally sound AsyncAPI 3.0 document: required keys, every `$ref` resolves, each
  operation's messages belong to its channel (the official JSON Schema is too large to vendor);
- its payload schemas accept what the pydantic models accept and refuse what they refuse;
- the replies and events a running stack really sends match it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import uuid4

import aio_pika
import jsonschema_rs
import pytest
import yaml
from pydantic import ValidationError

from shared.asyncapi import DOCUMENT, EVENT_MODELS, PUBLISHERS, render
from shared.commands import COMMAND_PAYLOADS, ListAudit
from shared.errors import Forbidden, TooManyRequests
from tests.support.accounts import User
from tests.support.backends import Backends
from tests.support.broker import BrokerProbe
from tests.support.stack import ROOT

#: The contract's commands, and those that need no `authorization` header.
CONTRACT_COMMANDS = (
    "register",
    "login",
    "logout",
    "get-me",
    "create-post",
    "get-post",
    "list-posts",
    "edit-post",
    "delete-post",
    "get-user",
    "ban-user",
)
CONTRACT_PUBLIC = {"register", "login", "refresh", "get-post", "list-posts", "get-user"}
#: The contract's events and the fields each body carries besides event_id and occurred_at.
CONTRACT_EVENTS = {
    "user.registered": {"user_id", "display_name"},
    "user.banned": {"user_id", "by", "reason"},
    "session.revoked": {"session_id", "user_id"},
    "post.created": {"post_id", "author_id"},
    "post.edited": {"post_id", "by"},
    "post.deleted": {"post_id", "by"},
}
ID = str(uuid4())
#: A valid payload for each command's model.
SAMPLES: dict[str, dict[str, Any]] = {
    "register": {"email": "ada@example.com", "password": "correct horse", "display_name": "Ada"},
    "login": {"email": "ada@example.com", "password": "x"},
    "logout": {},
    "get-me": {},
    "create-post": {"title": "Hello", "body": "World"},
    "get-post": {"post_id": ID},
    "list-posts": {"limit": 5, "cursor": None},
    "edit-post": {"post_id": ID, "title": "Better"},
    "delete-post": {"post_id": ID},
    "get-user": {"user_id": ID},
    "ban-user": {"user_id": ID, "reason": "spam"},
}
COMPONENT_KEY = re.compile(r"^[\w.\-]+$")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve ({part!r} missing)"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator for `schema` whose `#/components/...` references resolve in the document."""
    return jsonschema_rs.validator_for({**schema, "components": doc["components"]}, validate_formats=True)


def message(doc: dict[str, Any], channel: str) -> dict[str, Any]:
    (ref,) = doc["channels"][channel]["messages"].values()
    return resolve(doc, ref["$ref"])


@pytest.mark.unit
def test_the_committed_document_is_what_the_generator_writes() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), "asyncapi.yaml is stale: run `python -m shared.generate`"


@pytest.mark.unit
def test_every_command_of_the_contract_is_described(doc: dict[str, Any]) -> None:
    for name in CONTRACT_COMMANDS:
        channel = doc["channels"][f"command.{name}"]
        assert channel["address"] == name
        assert resolve(doc, channel["bindings"]["$ref"])["amqp"]["exchange"] == {
            "name": "commands",
            "type": "direct",
            "durable": True,
            "autoDelete": False,
        }
        command = message(doc, f"command.{name}")
        model = COMMAND_PAYLOADS[name]
        assert resolve(doc, command["payload"]["$ref"]) == model.model_json_schema(ref_template="#/components/schemas/{model}")
        properties = command["bindings"]["amqp"]["x-properties"]
        assert set(properties["properties"]) >= {"content_type", "message_id", "type", "reply_to", "correlation_id"}
        assert properties["properties"]["type"]["const"] == name
        assert properties["required"] == ["message_id"], "required is what the runner enforces, and no more"
        assert command["bindings"]["amqp"]["messageType"] == name
        assert not {"reply_to", "correlation_id", "message_id"} & set(command["headers"]["properties"]), "properties are not headers"
        assert ("authorization" in command["headers"]["properties"]) == (name not in CONTRACT_PUBLIC), name
        assert command["headers"].get("required", []) == ([] if name in CONTRACT_PUBLIC else ["authorization"])
        (operation,) = [op for op in doc["operations"].values() if op["channel"]["$ref"] == f"#/channels/command.{name}"]
        assert operation["action"] == "receive"
        assert ("security" in operation) == (name not in CONTRACT_PUBLIC)
        (reply_ref,) = operation["reply"]["messages"]
        reply = resolve(doc, resolve(doc, reply_ref["$ref"])["$ref"])
        ok, error = reply["payload"]["oneOf"]
        assert ok["required"] == ["ok", "result"] and ok["properties"]["ok"] == {"const": True}
        assert resolve(doc, error["$ref"])["properties"]["ok"] == {"const": False}
    assert set(resolve(doc, "#/components/schemas/ReplyError")["properties"]) == {"status", "title", "detail", "retry_after"}
    for service in ("auth", "users", "posts"):
        assert message(doc, f"command.list-audit.{service}")["payload"]["$ref"] == "#/components/schemas/ListAudit"


@pytest.mark.unit
def test_every_event_of_the_contract_is_described(doc: dict[str, Any]) -> None:
    assert set(EVENT_MODELS) == set(CONTRACT_EVENTS)
    for key, fields in CONTRACT_EVENTS.items():
        channel = doc["channels"][f"event.{key}"]
        assert channel["address"] == key
        assert resolve(doc, channel["bindings"]["$ref"])["amqp"]["exchange"]["type"] == "topic"
        schema = resolve(doc, message(doc, f"event.{key}")["payload"]["$ref"])
        assert set(schema["properties"]) == {"event_id", "occurred_at", *fields}, key
        assert {"event_id", "occurred_at"} <= set(schema["required"])
        senders = [op for op in doc["operations"].values() if op["channel"]["$ref"] == f"#/channels/event.{key}" and op["action"] == "send"]
        assert len(senders) == 1, f"{key} should have exactly one publisher"
    assert resolve(doc, doc["channels"]["dead-letters"]["bindings"]["$ref"])["amqp"]["exchange"]["name"] == "dead-letters"


@pytest.mark.unit
def test_each_event_has_the_publisher_the_broker_permits() -> None:
    """deploy/rabbitmq/definitions.json's topic permissions say who may publish each event."""
    definitions = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    for key, service in PUBLISHERS.items():
        allowed = [p["user"] for p in definitions["topic_permissions"] if p["exchange"] == "events" and re.fullmatch(p["write"], key)]
        assert allowed == [f"{service}_service"], key


@pytest.mark.unit
def test_it_is_a_structurally_valid_asyncapi_3_document(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"}
    assert doc["info"]["title"] and doc["info"]["version"]
    for server in doc["servers"].values():
        assert server["host"] and server["protocol"] == "amqp"
    for ref in refs(doc):
        resolve(doc, ref)
    for kind, entries in doc["components"].items():
        assert all(COMPONENT_KEY.fullmatch(key) for key in entries), kind
    for name, channel in doc["channels"].items():
        assert set(channel) <= {
            "address",
            "messages",
            "title",
            "summary",
            "description",
            "servers",
            "parameters",
            "tags",
            "externalDocs",
            "bindings",
        }, name
        assert set(re.findall(r"{(\w+)}", channel["address"] or "")) == set(channel.get("parameters", {})), name
        for ref in channel["messages"].values():
            assert "payload" in resolve(doc, ref["$ref"]), name
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), name
        for ref in operation["messages"]:  # AsyncAPI 3: a subset of the channel's messages
            assert ref["$ref"].startswith(channel_ref + "/messages/"), name
        if "reply" in operation:
            for ref in operation["reply"]["messages"]:
                assert ref["$ref"].startswith(operation["reply"]["channel"]["$ref"] + "/messages/"), name
    for name, msg in doc["components"]["messages"].items():
        validator(doc, msg["payload"])  # compiles: a valid JSON Schema
        amqp = msg.get("bindings", {}).get("amqp", {})
        # The AMQP message binding 0.3.0 defines these; anything else must be an extension.
        assert all(key in ("contentEncoding", "messageType", "bindingVersion") or key.startswith("x-") for key in amqp), name
        assert amqp.get("bindingVersion", "0.3.0") == "0.3.0", name
        validator(doc, amqp.get("x-properties", {}))
    # A runtime expression may only point into what the message really has: AMQP properties are
    # neither headers nor payload, so nothing may claim `$message.header#/reply_to` or the like.
    expressions = re.findall(r"\$message\.(header|payload)#/([\w-]+)", json.dumps(doc))
    assert not [(where, field) for where, field in expressions if where == "header" or field in ("reply_to", "correlation_id")]
    assert "correlationIds" not in doc["components"]


@pytest.mark.unit
def test_payload_schemas_accept_and_refuse_what_the_models_do(doc: dict[str, Any]) -> None:
    samples = {**SAMPLES, "list-audit.posts": {"decision": "denied", "limit": 10}}
    for name, sample in samples.items():
        model = ListAudit if name.startswith("list-audit") else COMMAND_PAYLOADS[name]
        check = validator(doc, message(doc, f"command.{name}")["payload"])
        model.model_validate_json(json.dumps(sample))
        assert check.is_valid(sample), name
        for bad in ({**sample, "role": "admin"}, {**sample, **{field: 12345 for field in list(sample)[:1]}}):
            if bad == sample:
                continue
            with pytest.raises(ValidationError):
                model.model_validate_json(json.dumps(bad))
            assert not check.is_valid(bad), f"{name}: {bad}"
    error = validator(doc, {"$ref": "#/components/schemas/ErrorReply"})
    for refused in (Forbidden("You do not have permission to delete this post"), TooManyRequests(retry_after=30)):
        assert error.is_valid({"ok": False, "error": refused.to_dict()})
    assert not error.is_valid({"ok": False, "error": {**Forbidden().to_dict(), "role": "admin"}})


# -- the running stack sends what the document says ---------------------------------------------


@pytest.fixture
async def heard_events(backends: Backends) -> AsyncIterator[list[aio_pika.abc.AbstractIncomingMessage]]:
    """Every event published on the run's vhost while the test runs."""
    heard: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(backends.amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind("events", routing_key="#")

    async def hear(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        heard.append(message)

    await queue.consume(hear, no_ack=True)
    yield heard
    await connection.close()


async def test_real_replies_and_events_match_the_document(
    doc: dict[str, Any],
    broker: BrokerProbe,
    new_user: Callable[..., Awaitable[User]],
    new_admin: Callable[[], Awaitable[User]],
    heard_events: list[aio_pika.abc.AbstractIncomingMessage],
    wait_until: Callable[..., Awaitable[object]],
) -> None:
    email, password = f"asyncapi-{uuid4().hex[:10]}@example.com", f"pw-{uuid4().hex}"
    other, admin = await new_user("other"), await new_admin()
    replies: list[tuple[str, dict[str, Any] | None]] = []

    async def send(name: str, payload: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        reply = await broker.command(name, payload, token=token)
        replies.append((name, reply))
        assert reply is not None
        return reply

    account = (await send("register", {"email": email, "password": password, "display_name": "Spec Reader"}))["result"]
    token = (await send("login", {"email": email, "password": password}))["result"]["access_token"]
    await send("get-me", {}, token)
    post = (await send("create-post", {"title": "Documented", "body": "On the wire"}, token))["result"]
    await send("get-post", {"post_id": post["id"]})
    await send("list-posts", {"limit": 2})
    assert (await send("edit-post", {"post_id": post["id"], "body": "Mine now"}, admin.token))["error"]["status"] == 403
    assert (await send("edit-post", {"post_id": post["id"], "body": "Still on the wire"}, token))["result"]["body"] == "Still on the wire"
    assert (await send("delete-post", {"post_id": post["id"]}, other.token))["error"]["status"] == 403
    assert (await send("delete-post", {"post_id": post["id"]}, token))["ok"]
    await send("get-user", {"user_id": account["id"]})
    await send("list-audit.posts", {"decision": "denied", "limit": 3}, admin.token)
    await send("logout", {}, token)
    await send("ban-user", {"user_id": other.id, "reason": "testing the document"}, admin.token)
    assert {name for name, _ in replies} >= {*CONTRACT_COMMANDS, "list-audit.posts"}
    for name, reply in replies:
        check = validator(doc, resolve(doc, f"#/components/messages/reply.{name}")["payload"])
        assert check.is_valid(reply), f"{name} reply {reply}: {[str(e) for e in check.iter_errors(reply)]}"

    async def every_event_heard() -> bool:
        return {m.routing_key for m in heard_events} >= set(CONTRACT_EVENTS)

    await wait_until(every_event_heard, timeout=5.0)
    for event in heard_events:
        key = event.routing_key or ""
        body = json.loads(event.body)
        check = validator(doc, message(doc, f"event.{key}")["payload"])
        assert check.is_valid(body), f"{key} {body}: {[str(e) for e in check.iter_errors(body)]}"
        assert set(body) == {"event_id", "occurred_at", *CONTRACT_EVENTS[key]}, key
        assert (event.message_id, event.type, event.content_type) == (body["event_id"], key, "application/json")
