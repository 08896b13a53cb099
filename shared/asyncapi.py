"""The AsyncAPI 3.0 document of the broker side, built from the models that validate the messages.

    python -m shared.asyncapi            print the document as the code defines it
    python -m shared.asyncapi --write    rewrite asyncapi.yaml at the repository root

Everything comes from the declarations: each command's payload, result, policy and summary
(`shared.commands.COMMANDS`), each event's model, publisher and consumers (`shared.events.EVENTS`),
and the queues from `shared.topology`. `python -m shared.generate` rewrites asyncapi.yaml, and
tests/test_generated.py fails when the committed file differs from this output, so the two cannot
drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NotRequired

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from pydantic.json_schema import JsonSchemaMode
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from shared.broker import COMMANDS_EXCHANGE, DEAD_LETTER_EXCHANGE, DELIVERY_LIMIT, EVENTS_EXCHANGE
from shared.commands import COMMANDS
from shared.envelope import (
    AUTHORIZATION_HEADER,
    CLIENT_ADDRESS_HEADER,
    CLIENT_USER_AGENT_HEADER,
    MESSAGE_ID,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    USER_AGENT_MAX_LENGTH,
)
from shared.events import EVENTS
from shared.redaction import REDACTED, REDACTED_HEADER
from shared.topology import EXCHANGES, ROUTES, command_keys, queues

DOCUMENT = Path(__file__).resolve().parents[1] / "asyncapi.yaml"
SCHEMA = "#/components/schemas/{model}"
AMQP_BINDING = "0.3.0"


@with_config(ConfigDict(extra="forbid"))
class ReplyError(TypedDict):
    """`error` in a refused command's reply, as `AppError.to_dict` writes it."""

    status: Annotated[
        int,
        Field(
            ge=400,
            le=599,
            description="The HTTP status the gateway answers with: 400 a body that is not JSON, no message_id or a content_type "
            "other than JSON; 401 no token, or one that does not verify or whose session is revoked; 403 banned, or not "
            "allowed (not the owner, not an admin); 404 no such resource; 409 a conflict (an email taken, a message_id used for another command); 413 over the "
            "size limit; 422 a payload its schema refuses (a missing, unknown or mistyped field) or a `type` that is not "
            "the routing key; 429 too many attempts; 503 unavailable",
        ),
    ]
    title: str
    detail: Annotated[str, Field(description="Safe to show a person")]
    retry_after: NotRequired[Annotated[int, Field(ge=1, description="Seconds to wait (429, 503)")]]


#: What a reply carries besides its body.
REPLY_PROPERTIES = {
    "type": "object",
    "required": ["content_type"],
    "properties": {
        "content_type": {"const": "application/json"},
        "correlation_id": {"type": "string", "description": "The command's correlation_id, when it had one"},
        "user_id": {"type": "string", "description": "The answering service's broker user (RabbitMQ checks it)"},
    },
}

#: The model of each event, and the one service that publishes it (the broker's topic permissions enforce it).
EVENT_MODELS = {name: event.model for name, event in EVENTS.items()}
PUBLISHERS = {name: event.owner.name for name, event in EVENTS.items()}


def summary(key: str) -> str:
    """What a command does, and who may."""
    declared = COMMANDS[key]
    return f"{declared.summary} {declared.policy.describe()}"


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMA.format(model=name)}


def _schemas(models: Sequence[Any], mode: JsonSchemaMode) -> dict[str, Any]:
    """JSON Schemas by model name, nested models hoisted beside them."""
    found: dict[str, Any] = {}
    for model in models:
        schema = TypeAdapter(model).json_schema(ref_template=SCHEMA, mode=mode)
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


def _user_id(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "description": f"The publishing connection's broker user: RabbitMQ refuses a message that claims another's. {description}",
    }


def _message_binding(name: str, message_id: str, *, command: bool) -> dict[str, Any]:
    """The AMQP message binding: the type, and the basic properties the message carries.

    The binding (0.3.0) names only `messageType` and `contentEncoding`, so the properties are
    described in its extension `x-properties`. They are AMQP properties, not headers: AsyncAPI's
    runtime expressions reach only headers and payload, so no `correlationId` or reply `address`
    location is given (either would claim a header that is not there).
    """
    props: dict[str, Any] = {
        "content_type": {"const": "application/json"},
        "message_id": {"type": "string", "pattern": f"^{MESSAGE_ID.pattern}$", "description": message_id},
        "type": {"const": name},
    }
    required = ["content_type", "message_id", "type"]
    if command:
        # What the runner enforces, and nothing more: without a message_id a command is malformed
        # (400, parked); a missing type or content type is read as the routing key and as JSON.
        required = ["message_id"]
        props["content_type"]["description"] = "Absent is read as application/json; anything else is 400"
        props["type"]["description"] = "Absent: the routing key names the command; a different one is 422"
        props["reply_to"] = {"type": "string", "description": "Where the reply goes (amq.rabbitmq.reply-to); no reply without it"}
        props["correlation_id"] = {"type": "string", "description": "Copied into the reply's correlation_id property"}
        props["user_id"] = _user_id(
            f"{CLIENT_ADDRESS_HEADER} and {CLIENT_USER_AGENT_HEADER} are believed only when it is the gateway's (BROKER_USER_GATEWAY); "
            "a command carrying either header from anyone else is 403 and parked. Grants no privilege: only the token does"
        )
    else:
        owner = EVENTS[name].owner
        required.append("user_id")
        props["user_id"] = _user_id(
            f"Must be {owner.package}'s ({owner.process.broker_user_variable}, default {owner.process.default_broker_user!r}), "
            "the service that owns the event: from anyone else it is parked and changes nothing"
        )
    properties = {"type": "object", "required": required, "properties": props}
    return {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING, "x-properties": properties}}


def _headers(guarded: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        REQUEST_ID_HEADER: {
            "type": "string",
            "pattern": f"^{REQUEST_ID.pattern}$",
            "description": "Bound in every log line about the command",
        },
        CLIENT_ADDRESS_HEADER: {
            "type": "string",
            "description": (
                "The client's address as the gateway saw it; only rate-limits login and refresh, grants nothing. Only the gateway may send it "
                "(its user_id): from anyone else the command is 403 and parked"
            ),
        },
        CLIENT_USER_AGENT_HEADER: {
            "type": "string",
            "maxLength": USER_AGENT_MAX_LENGTH,
            "description": (
                "The client's User-Agent as the gateway saw it, printable characters only, cut to "
                f"{USER_AGENT_MAX_LENGTH}; only shown in the session list (list-sessions), grants nothing. Only the gateway may "
                "send it (its user_id): from anyone else the command is 403 and parked"
            ),
        },
    }
    if not guarded:
        return {"type": "object", "properties": props}
    props[AUTHORIZATION_HEADER] = {
        "type": "string",
        "pattern": r"^Bearer \S+$",
        "description": (
            "Bearer <access token>: the only thing that says who the caller is. A long string, or a byte array read as UTF-8 "
            "(one that is not UTF-8 is 401)"
        ),
    }
    return {"type": "object", "required": [AUTHORIZATION_HEADER], "properties": props}


def _command(key: str, service: str, doc: dict[str, Any]) -> None:
    """Add the channel, command and reply messages, and operation of one routing key on `commands`."""
    declared = COMMANDS[key]
    payload, guarded = declared.payload, declared.guarded
    messages = doc["components"]["messages"]
    messages[f"command.{key}"] = {
        "name": key,
        "title": f"{key} command",
        "summary": summary(key),
        "headers": _headers(guarded),
        "payload": _schema_ref(payload.__name__),
        "bindings": _message_binding(
            key,
            "Required (without one the command is malformed: 400, parked). Unique; the idempotency key: a repeat from the same "
            "caller with the same payload gets the first reply (login and refresh never do); with a different payload it is refused (422)",
            command=True,
        ),
    }
    result = declared.result
    ok = {
        "type": "object",
        "additionalProperties": False,
        "required": ["ok", "result"],
        "properties": {"ok": {"const": True}, "result": _schema_ref(result.__name__) if result else {"type": "null"}},
    }
    messages[f"reply.{key}"] = {
        "name": f"{key} reply",
        "title": f"{key} reply",
        "payload": {"oneOf": [ok, _schema_ref("ErrorReply")]},
        "bindings": {"amqp": {"bindingVersion": AMQP_BINDING, "x-properties": REPLY_PROPERTIES}},
    }
    doc["channels"]["reply"]["messages"][key] = _ref("components", "messages", f"reply.{key}")
    channel = f"command.{key}"
    doc["channels"][channel] = {
        "address": key,
        "title": f"{key} on {COMMANDS_EXCHANGE}",
        "bindings": _ref("components", "channelBindings", COMMANDS_EXCHANGE),
        "messages": {key: _ref("components", "messages", f"command.{key}")},
    }
    operation: dict[str, Any] = {
        "action": "receive",
        "channel": _ref("channels", channel),
        "messages": [_ref("channels", channel, "messages", key)],
        "title": f"{service}_service executes {key}",
        "tags": [{"name": service}],
        "description": f"Consumed from the quorum queue {service}.commands. {summary(key)}",
        "bindings": _ref("components", "operationBindings", "consume"),
        "reply": {
            "channel": _ref("channels", "reply"),
            "messages": [_ref("channels", "reply", "messages", key)],
        },
    }
    if guarded:
        operation["security"] = [_ref("components", "securitySchemes", "accessToken")]
    doc["operations"][f"{service}.{key}"] = operation


def _event(key: str, doc: dict[str, Any]) -> None:
    """Add the channel, message, publishing operation and consuming operations of one event."""
    channel, publisher = f"event.{key}", PUBLISHERS[key]
    doc["components"]["messages"][channel] = {
        "name": key,
        "title": f"{key} event",
        "payload": _schema_ref(EVENT_MODELS[key].__name__),
        "bindings": _message_binding(key, "The event_id; consumers ignore one they have seen", command=False),
    }
    doc["channels"][channel] = {
        "address": key,
        "title": f"{key} on {EVENTS_EXCHANGE}",
        "bindings": _ref("components", "channelBindings", EVENTS_EXCHANGE),
        "messages": {key: _ref("components", "messages", channel)},
    }
    common = {"channel": _ref("channels", channel), "messages": [_ref("channels", channel, "messages", key)]}
    doc["operations"][f"{publisher}.publish.{key}"] = {
        "action": "send",
        **common,
        "title": f"{publisher}_service publishes {key}",
        "tags": [{"name": publisher}],
        "description": "Written to the outbox with its change, relayed with publisher confirms: published if and only if the change committed.",
        "bindings": _ref("components", "operationBindings", "publish"),
    }
    for service in (name for name, routes in ROUTES.items() if key in routes.events):
        doc["operations"][f"{service}.on.{key}"] = {
            "action": "receive",
            **common,
            "title": f"{service}_service handles {key}",
            "tags": [{"name": service}],
            "description": f"Consumed from the quorum queue {service}.events.",
            "bindings": _ref("components", "operationBindings", "consume"),
        }


def _dead_letters(doc: dict[str, Any]) -> None:
    died_in = [queue.name for service in ROUTES for queue in queues(service) if "x-dead-letter-exchange" in queue.arguments]
    doc["components"]["messages"]["dead-letter"] = {
        "name": "dead-letter",
        "title": "A parked message",
        "payload": {
            "description": (
                "The original body, with the value of every field a command declares secret (writeOnly in its schema) replaced "
                f"by {REDACTED!r}; a body that is not JSON or is over the size limit is replaced by a note, unless it names a known "
                "command with no secret"
            )
        },
        "headers": {
            "type": "object",
            "required": ["x-dead-letter-reason"],
            "properties": {
                "x-dead-letter-reason": {"type": "string"},
                "x-original-exchange": {"type": "string"},
                "x-original-routing-key": {"type": "string"},
                "x-original-user-id": {
                    "type": "string",
                    "description": "The user_id it was first published with (empty: none); the message itself carries the parking service's",
                },
                REDACTED_HEADER: {"type": "string", "description": "What was taken out: header and field names, or `body`"},
                AUTHORIZATION_HEADER: {"const": REDACTED},
            },
        },
    }
    doc["channels"][DEAD_LETTER_EXCHANGE] = {
        "address": "{queue}",
        "title": f"{DEAD_LETTER_EXCHANGE}: messages parked in <queue>.dead",
        "bindings": _ref("components", "channelBindings", DEAD_LETTER_EXCHANGE),
        "parameters": {"queue": {"enum": died_in, "description": "The queue the message died in; it waits in <queue>.dead"}},
        "messages": {"dead-letter": _ref("components", "messages", "dead-letter")},
        "description": (
            "A message that is not JSON, has no message_id, names an unknown command or has a malformed payload is parked by "
            "the runner with the reason, its credentials and secret fields redacted; so is a command that failed "
            f"{DELIVERY_LIMIT} deliveries in a row (it crashes its consumer). Anything else past the delivery limit (an event) "
            "is dead-lettered by RabbitMQ (x-death). `python -m shared.dead_letters` lists, replays and drops them."
        ),
    }
    for service in ROUTES:
        doc["operations"][f"{service}.park"] = {
            "action": "send",
            "channel": _ref("channels", DEAD_LETTER_EXCHANGE),
            "tags": [{"name": service}],
            "title": f"{service}_service parks a message it cannot process",
            "messages": [_ref("channels", DEAD_LETTER_EXCHANGE, "messages", "dead-letter")],
        }


def build_document() -> dict[str, Any]:
    """The whole AsyncAPI document, as plain data."""
    results = list(dict.fromkeys(c.result for c in COMMANDS.values() if c.result is not None))
    payloads = list(dict.fromkeys(c.payload for c in COMMANDS.values()))
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Zero-trust posts platform: the broker",
            "version": "0.1.0",
            "description": (
                "Commands on the direct exchange `commands` (routing key = command name) and their replies, events on the topic "
                "exchange `events`, parked messages on `dead-letters`. Nothing behind the gateway trusts it: every service verifies "
                "the token in each command's `authorization` header and decides for itself. Every command carries a `message_id` "
                "property; one without is malformed (400). The AMQP properties of each message are in its `bindings.amqp` "
                "(`x-properties`); `reply_to` and `correlation_id` are properties, never headers. A routing key no service consumes "
                "is unroutable and RabbitMQ drops it silently: publish with `mandatory=true` (it comes back as basic.return) and "
                "wait for a reply with a timeout. Generated by `python -m shared.asyncapi`."
            ),
        },
        "servers": {
            "rabbitmq": {
                "host": "127.0.0.1:5672",
                "pathname": "/",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "AMQP_URL names the broker and the vhost (its path); this is its default.",
            }
        },
        "defaultContentType": "application/json",
        "channels": {
            "reply": {
                "address": None,
                "title": "Replies",
                "messages": {},
                "description": (
                    "The sender's reply_to queue, reached through the default exchange. A reply carries the command's correlation_id "
                    'and is {"ok": true, "result": ...} or {"ok": false, "error": {status, title, detail, retry_after?}}. '
                    "With RabbitMQ's direct reply-to, reply_to is `amq.rabbitmq.reply-to`, and the sender consumes that "
                    "pseudo-queue in no-ack mode on the channel it publishes from, before it publishes."
                ),
            }
        },
        "operations": {},
        "components": {
            "schemas": {
                **_schemas([*payloads, ReplyError], "validation"),
                "ErrorReply": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["ok", "error"],
                    "properties": {"ok": {"const": False}, "error": _schema_ref("ReplyError")},
                },
                **_schemas(results, "serialization"),
                **_schemas(list(EVENT_MODELS.values()), "validation"),
            },
            "messages": {},
            "securitySchemes": {
                "accessToken": {
                    "type": "httpApiKey",
                    "name": AUTHORIZATION_HEADER,
                    "in": "header",
                    "description": "Bearer <access token>: an EdDSA JWT (typ at+jwt) signed by auth_service, verified by every service",
                }
            },
            "channelBindings": {
                name: {
                    "amqp": {
                        "is": "routingKey",
                        "bindingVersion": AMQP_BINDING,
                        "exchange": {"name": name, "type": kind.value, "durable": True, "autoDelete": False},
                    }
                }
                for name, kind in EXCHANGES.items()
            },
            "operationBindings": {
                "consume": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
                "publish": {"amqp": {"deliveryMode": 2, "bindingVersion": AMQP_BINDING}},
            },
        },
    }
    for service in ROUTES:
        for key in command_keys(service):
            _command(key, service, doc)
    doc["channels"]["reply"] = doc["channels"].pop("reply")  # listed after the commands it answers
    for key in EVENT_MODELS:
        _event(key, doc)
    _dead_letters(doc)
    return doc


def render() -> str:
    return yaml.safe_dump(build_document(), sort_keys=False, allow_unicode=True, width=120)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.asyncapi", description="Print the broker's AsyncAPI 3.0 document, or rewrite asyncapi.yaml."
    )
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOCUMENT.name} at the repository root")
    if parser.parse_args(argv).write:
        DOCUMENT.write_text(render(), encoding="utf-8")
        print(f"wrote {DOCUMENT}")
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
