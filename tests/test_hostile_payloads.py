"""Hostile values in every field of every command, from a caller the command lets in.

tests/test_fuzz_runner.py throws malformed messages and forged tokens at the runner, so almost
nothing it sends gets past the token check. This module is its complement: every message carries
a valid token of a party the command's policy grants (`Policy.grants`; none for a public command),
and starts from a payload the command's model accepts, so the hostile value reaches validation,
the handler, the SQL and the Python conversions behind it. Derived from the declarations: for
each command of `shared.commands.COMMANDS`, one field of its payload model (or a field it does not
define, or the whole body) is replaced by a hostile value: wrong types, numbers out of int8 and
JSON's safe range, floats, `NaN`-like strings, non-ASCII digits, lone surrogates, control and
bidi characters, very long text, nested objects, null, empty.

Properties:
- every reply is well-formed and no 500: a value a client chose is a 4xx, never an unhandled
  exception;
- a message whose payload the model accepts (well-formed, a bad value at most) is never parked in
  `<service>.commands.dead`: parking is for messages that cannot be a command at all.

Bounded: a fixed seed (`derandomize`), a modest number of examples per command.
"""

from __future__ import annotations

import asyncio
import json
import typing
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.authorization import Party
from shared.commands import COMMANDS
from shared.declarations import Command
from shared.roles import Role
from tests.support.accounts import User, make_admin, register
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack

EXAMPLES_PER_COMMAND = 15
#: Messages of the edge sweep in flight at once: auth_service hashes passwords, and a deep queue
#: would only turn into reply timeouts.
IN_FLIGHT = 4
#: How often a message answered "busy, retry after" (503) is sent again before its answer counts.
BUSY_RETRIES = 10

# -- hostile values ------------------------------------------------------------------------------

#: The edge values every field of the matching type is tried with, each one (the random search
#: below also draws from them, but a handful of examples cannot be relied on to hit each).
EDGE_INTS = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30)]
EDGE_STRINGS = [
    "",
    " ",
    "\t\n",
    "²",
    "٣٤",
    "１２",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e309",
    "-0",
    "0x10",
    "9" * 30,
    "\ud800",
    "a\udfffb",
    "\u202e\u2066",
    "\x00",
    "\x7f\x1b[31m",
    "null",
    "{}",
    "[]",
    "' OR 1=1 --",
    "%s%n",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "x" * 20_001,
    "é" * 5_000,
    "😀" * 1_000,
]
#: Values of the wrong type, tried in every field too.
EDGE_OTHERS: list[Any] = [None, True, 0.5, -0.0, 1e308, [], {}, [[[[]]]], {"$gt": ""}]

hostile_ints = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**80), max_value=2**80),
)
hostile_strings = st.one_of(
    st.sampled_from(EDGE_STRINGS),
    st.text(max_size=40),
)
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    hostile_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -0.0, 1e308, 5e-324, 1.0, 20.0]),
    hostile_strings,
)
hostile_values = st.one_of(
    hostile_scalars,
    st.lists(hostile_scalars, max_size=3),
    st.dictionaries(st.text(max_size=8), hostile_scalars, max_size=3),
    st.recursive(st.just([]), lambda inner: st.lists(inner, min_size=1, max_size=1), max_leaves=40),
)
hostile_bodies: st.SearchStrategy[Any] = st.one_of(hostile_values.filter(lambda v: not isinstance(v, dict)), st.just({}))

# -- a valid start, from the model ----------------------------------------------------------------


def base_payload(command: Command, own_post: str) -> dict[str, Any]:
    """A payload the command's model accepts: examples where the field has them, else the first
    of a few plain values of its type that the field takes."""
    payload: dict[str, Any] = {}
    for name, field in command.payload.model_fields.items():
        if field.annotation is UUID:
            payload[name] = own_post if name == "post_id" else str(uuid4())
        elif field.examples:
            payload[name] = field.examples[0]
        elif field.is_required():
            annotation = field.annotation
            if typing.get_origin(annotation) is typing.Literal:
                payload[name] = typing.get_args(annotation)[0]
                continue
            for candidate in ("sample", f"fuzz-{uuid4().hex[:12]}@example.com", f"pw-{uuid4().hex}", 1):
                payload[name] = candidate
                if not field_refused(command, payload, name):
                    break
    assert not [n for n in payload if field_refused(command, payload, n)], f"no valid base payload for {command.name}: {payload}"
    return payload


def field_refused(command: Command, payload: dict[str, Any], name: str) -> bool:
    try:
        command.payload.model_validate_json(json.dumps(payload))
    except ValidationError as exc:
        return any(error["loc"][:1] == (name,) for error in exc.errors())
    return False


def kinds(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (through Optional, Annotated and Literal)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return {str}
    if not args:
        return {annotation}
    return set().union(*(kinds(arg) for arg in args))


def typed_values(command: Command, name: str) -> st.SearchStrategy[Any]:
    """Hostile values of the field's own type, so that many get past the model to the handler."""
    admitted = kinds(command.payload.model_fields[name].annotation)
    strategies: list[st.SearchStrategy[Any]] = []
    if int in admitted:
        strategies.append(hostile_ints)
    if str in admitted:
        strategies.append(hostile_strings)
    if UUID in admitted:
        strategies.append(st.one_of(st.uuids().map(str), st.sampled_from([str(UUID(int=0)), str(UUID(int=2**128 - 1))])))
    return st.one_of(*strategies) if strategies else hostile_values


@st.composite
def hostile_payloads(draw: st.DrawFn, command: Command, own_post: str) -> bytes:
    payload = base_payload(command, own_post)
    fields = sorted(command.payload.model_fields)
    where = draw(st.sampled_from([*fields, *fields, "a field it does not define", "the whole body"]))
    if where == "the whole body":
        return json.dumps(draw(hostile_bodies)).encode()
    value = draw(hostile_values if where not in fields or draw(st.booleans()) else typed_values(command, where))
    payload["sample_extra" if where == "a field it does not define" else where] = value
    return json.dumps(payload).encode()


def well_formed(command: Command, body: bytes) -> bool:
    try:
        command.payload.model_validate_json(body)
    except ValidationError:
        return False
    return True


# -- the rig ------------------------------------------------------------------------------------


class Sent:
    """Message ids of the well-formed messages sent, by the queue that would park them."""

    def __init__(self) -> None:
        self.well_formed: dict[str, set[str]] = {}
        self.count = 0


@pytest.fixture(scope="module")
def sent() -> Sent:
    return Sent()


@pytest.fixture(scope="module")
async def admin_holder(http: aiohttp.ClientSession, stack: Stack) -> User:
    return await make_admin(http, stack)


@pytest.fixture(scope="module")
async def holders(http: aiohttp.ClientSession, admin_holder: User) -> AsyncIterator[dict[str, tuple[User | None, str]]]:
    """By command: the caller (a party its policy grants; a user of its own, so that a logout
    ends nobody else's session) and a post that caller owns."""
    found: dict[str, tuple[User | None, str]] = {}
    for name, command in COMMANDS.items():
        party: Party | None = command.policy.grants[0] if command.policy.needs_token else None
        holder = None if party is None else admin_holder if party.role is Role.ADMIN else await register(http, "holder")
        author = holder or await register(http, "author")
        async with http.post("/posts", json={"title": "Mine", "body": "To be fuzzed"}, headers=author.auth) as response:
            assert response.status == 201, await response.text()
            found[name] = (holder, str((await response.json())["id"]))
    yield found


@pytest.mark.parametrize("name", list(COMMANDS))
@settings(
    max_examples=EXAMPLES_PER_COMMAND,
    derandomize=True,  # a fixed seed: the same messages each run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_hostile_value_is_never_a_500(
    broker: BrokerProbe, holders: dict[str, tuple[User | None, str]], sent: Sent, name: str, data: st.DataObject
) -> None:
    command = COMMANDS[name]
    holder, own_post = holders[name]
    body = data.draw(hostile_payloads(command, own_post), label="body")
    message_id = str(uuid4())
    reply = await broker.command(name, body=body, token=holder.token if holder else None, message_id=message_id, timeout=15.0)
    note(f"reply: {reply!r}")
    assert reply is not None and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        status = reply["error"]["status"]
        assert isinstance(status, int) and 400 <= status < 500, f"{name} answered {reply!r}"
    if well_formed(command, body):
        sent.well_formed.setdefault(f"{command.service.name}.commands", set()).add(message_id)
    sent.count += 1


async def send(broker: BrokerProbe, sent: Sent, command: Command, holder: User | None, body: bytes) -> tuple[bytes, Any]:
    message_id = str(uuid4())
    for _ in range(BUSY_RETRIES):
        reply = await broker.command(command.name, body=body, token=holder.token if holder else None, message_id=message_id, timeout=15.0)
        # Several well-formed registrations in flight can fill auth_service's hashing queue: a
        # 503 with Retry-After is then the answer, and a client retries after it, as here.
        if reply and not reply["ok"] and reply["error"]["status"] == 503 and reply["error"].get("retry_after"):
            await asyncio.sleep(reply["error"]["retry_after"])
            continue
        break
    if well_formed(command, body):
        sent.well_formed.setdefault(f"{command.service.name}.commands", set()).add(message_id)
    sent.count += 1
    return body, reply


@pytest.mark.parametrize("name", list(COMMANDS))
async def test_every_edge_value_in_every_field_is_never_a_500(
    broker: BrokerProbe, holders: dict[str, tuple[User | None, str]], sent: Sent, name: str
) -> None:
    command = COMMANDS[name]
    holder, own_post = holders[name]
    bodies = []
    for field in [*command.payload.model_fields, "sample_extra"]:
        for value in [*EDGE_INTS, *EDGE_STRINGS, *EDGE_OTHERS]:
            bodies.append(json.dumps({**base_payload(command, own_post), field: value}).encode())
    bodies.extend(json.dumps(value).encode() for value in [*EDGE_INTS[:3], *EDGE_STRINGS[:3], *EDGE_OTHERS])
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(body: bytes) -> tuple[bytes, Any]:
        async with gate:
            return await send(broker, sent, command, holder, body)

    replies = await asyncio.gather(*(one(body) for body in bodies))
    wrong = [(body[:120], reply) for body, reply in replies if not reply["ok"] and not 400 <= reply["error"]["status"] < 500]
    assert not wrong, f"{name} answered {len(wrong)} hostile values with no 4xx, for example {wrong[:3]}"


async def test_no_well_formed_message_was_parked(broker: BrokerProbe, sent: Sent) -> None:
    if not sent.count:
        pytest.skip("run with test_hostile_value_is_never_a_500: it sends what this checks")
    await asyncio.sleep(1.0)  # a park follows its reply
    assert sum(map(len, sent.well_formed.values())) > 30, "too few well-formed messages to show anything"
    for queue, ids in sent.well_formed.items():
        parked = {m.message_id: m.headers.get("x-dead-letter-reason") for m in await broker.dead_letters(queue) if m.message_id in ids}
        assert not parked, f"well-formed messages parked in {queue}.dead: {parked}"
