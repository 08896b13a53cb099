"""Property-based fuzzing of the consumer runner, straight over the real broker.

Hypothesis generates command messages an attacker with broker access could publish: routing keys
and `type`s from the real command set and junk (junk names go straight into a service's command
queue through the default exchange, so every message reaches a consumer), bodies that are JSON
objects with random and real field names, other JSON values or random bytes, random content
types and message ids, and random headers, including `authorization` values that are garbage or
tokens forged with random claims. A forged token is always signed by the real key or a
look-alike, but always carries at least one flaw the contract rejects (expired past the leeway,
wrong `iss` or `aud`, a missing claim, a foreign key, `alg: none`, HS256 keyed with the public
key, a wrong `typ`), so no message in this module holds a valid token.

Properties:
- every message with a `reply_to` gets a reply that is `{"ok": bool, ...}`; an error carries an
  int `status` in 400..599 (never a bare 500: that is an unhandled exception), a str `title` and
  a str `detail` that is no Python repr or traceback;
- `ok: true` only ever answers a public command of the contract;
- each of those messages gets exactly one reply;
- no row of any table in the `auth`, `users` and `posts` schemas changed (audit_log aside) over
  the whole run;
- afterwards every service still does real work for a valid token.

How Hypothesis meets asyncio here: pytest-asyncio runs a `@given` coroutine test by driving each
generated example to completion on the session's event loop (`AsyncHypothesisTest`), so the test
below is an ordinary `async def`, Hypothesis shrinks a failing message to a minimal one, and the
fixtures are module- or session-scoped (no function-scoped fixture is re-used across examples).
The whole-run properties (one reply each, nothing changed, still serving) are the tests after
it, which read what it recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.commands import COMMAND_PAYLOADS
from shared.declarations import SERVICE_NAMES
from tests.support.accounts import User, make_admin, register
from tests.support.backends import Backends
from tests.support.broker import REPLY_TO, BrokerProbe, WaitUntil
from tests.support.fingerprint import Fingerprint, changed_tables, settled_fingerprint
from tests.support.forge import TokenForge
from tests.support.stack import Stack
from tests.test_every_command_is_guarded import CONTRACT_PUBLIC

SERVICES = SERVICE_NAMES
REAL_COMMANDS = tuple(sorted(COMMAND_PAYLOADS))  # the audit commands are declared among them
COMMAND_QUEUES = tuple(f"{s}.commands" for s in SERVICES)
#: What must never show in an error a caller sees.
LEAKS = ("Traceback", "Error(", "<" + "object at")
ISSUER, AUDIENCE = "auth_service", "posts-platform"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "role", "iat", "exp", "jti")

# -- strategies ----------------------------------------------------------------------------------

# Text the services may echo (an unknown command's name, a field name) must not itself look like a
# leak, or the leak check would blame the service for repeating the attacker's own words.
safe_text = st.text(max_size=24).filter(lambda s: not any(leak in s for leak in LEAKS))
# Strings that have broken string handling before: NUL (PostgreSQL text cannot hold it), control
# characters, quoting, format specifiers, long multi-byte text.
nasty_text = st.sampled_from(["\x00", "a\x00b", "\n", "\r\n\t", "' OR 1=1 --", "%s%n{0}", "ü" * 60, "x" * 200])
junk_names = st.one_of(
    safe_text,
    st.sampled_from(["", "admin", "BAN-USER", "ban-user ", "list-audit", "list-audit.gateway", "set-role", "#", "*", "commands"]),
)
FIELD_NAMES = sorted(
    {name for model in COMMAND_PAYLOADS.values() for name in model.model_fields}
    | {"decision", "limit", "cursor", "author_id", "role", "sub", "caller", "is_admin", "authorization"}
)
json_keys = st.one_of(st.sampled_from(FIELD_NAMES), safe_text)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    safe_text,
    st.uuids().map(str),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4), max_leaves=12
)
bodies = st.one_of(
    st.dictionaries(json_keys, json_values, max_size=5).map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


def well_formed_payloads(command: str) -> st.SearchStrategy[bytes]:
    """A payload the command's model accepts, so the message gets as far as the token check.
    Not for register and login (they get `{}`): a valid one may legitimately write without a token."""
    text = safe_text.filter(str.strip)
    ids = st.uuids().map(str)
    fields: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "create-post": st.fixed_dictionaries({"title": text, "body": text}),
        "delete-post": st.fixed_dictionaries({"post_id": ids}),
        "get-post": st.fixed_dictionaries({"post_id": ids}),
        "ban-user": st.fixed_dictionaries({"user_id": ids}, optional={"reason": safe_text}),
        "get-user": st.fixed_dictionaries({"user_id": ids}),
        "list-posts": st.fixed_dictionaries({}, optional={"limit": st.integers(1, 100)}),
    }
    default = (
        st.fixed_dictionaries({}, optional={"limit": st.integers(1, 100), "decision": st.sampled_from(["allowed", "denied", "replayed"])})
        if command.startswith("list-audit.")
        else st.just({})
    )
    return fields.get(command, default).map(lambda v: json.dumps(v).encode())


# What an AMQP field table can carry (pamqp sends bytes as a bytearray).
header_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    safe_text,
    nasty_text,
    st.binary(max_size=40).map(bytearray),
)
header_values = st.one_of(header_scalars, st.lists(header_scalars, max_size=3), st.dictionaries(safe_text, header_scalars, max_size=3))
IDENTITY_HEADERS = [
    "x-user-id",
    "x-user",
    "x-role",
    "role",
    "x-admin",
    "sub",
    "x-request-id",
    "x-client-address",
    "x-client-user-agent",
    "x-caller",
]


@dataclass(frozen=True)
class ForgedToken:
    """How to forge a token: random claims, and the one flaw that must get it refused."""

    sub: str
    sid: str
    role: str
    extra: dict[str, Any]
    flaw: str
    detail: Any = None

    def sign(self, forge: TokenForge) -> str:
        now = int(time.time())
        overrides: dict[str, Any] = {}
        if self.flaw == "expired":
            overrides = {"iat": now - 1200 - self.detail, "exp": now - 10 - self.detail}
        elif self.flaw == "wrong iss":
            overrides = {"iss": self.detail}
        elif self.flaw == "wrong aud":
            overrides = {"aud": self.detail}
        elif self.flaw == "missing claim":
            overrides = {self.detail: None}
        claims = forge.claims(self.sub, self.sid, role=self.role)
        claims.update(overrides)
        claims = {**self.extra, **{name: value for name, value in claims.items() if value is not None}}
        if self.flaw == "foreign key":
            return forge.foreign_key(claims)
        if self.flaw == "alg none":
            return forge.alg_none(claims)
        if self.flaw == "HS256 with the public key":
            return forge.hs256_with_public_key(claims)
        if self.flaw == "wrong typ":
            return forge.sign(claims, headers={"typ": self.detail})
        return forge.sign(claims)


@st.composite
def forged_tokens(draw: st.DrawFn) -> ForgedToken:
    flaw = draw(
        st.sampled_from(
            ["expired", "wrong iss", "wrong aud", "missing claim", "foreign key", "alg none", "HS256 with the public key", "wrong typ"]
        )
    )
    detail: Any = {
        "expired": st.integers(min_value=0, max_value=10**6),
        "wrong iss": safe_text.filter(lambda s: s != ISSUER),
        "wrong aud": st.one_of(safe_text, st.lists(safe_text, max_size=3)).filter(
            lambda a: a != AUDIENCE and (not isinstance(a, list) or AUDIENCE not in a)
        ),
        "missing claim": st.sampled_from(REQUIRED_CLAIMS),
        "wrong typ": st.sampled_from(["JWT", "jwt", "", "dpop+jwt", "id_token+jwt", "at+jwt "]),
    }.get(flaw, st.none())
    return ForgedToken(
        sub=draw(st.one_of(st.uuids().map(str), safe_text)),
        sid=draw(st.one_of(st.uuids().map(str), safe_text)),
        role=draw(st.one_of(st.sampled_from(["user", "admin"]), safe_text)),
        extra=draw(
            st.dictionaries(st.sampled_from(["admin", "is_admin", "roles", "scope", "sub_type", "groups"]), json_scalars, max_size=3)
        ),
        flaw=flaw,
        detail=draw(detail),
    )


@dataclass(frozen=True)
class Authorization:
    header: str  # the header's name, in some capitalisation
    scheme: str
    value: Any  # a ForgedToken to sign, or a raw header value

    def render(self, forge: TokenForge) -> Any:
        return self.scheme + self.value.sign(forge) if isinstance(self.value, ForgedToken) else self.value


authorizations = st.builds(
    Authorization,
    header=st.sampled_from(["authorization", "authorization", "Authorization", "AUTHORIZATION"]),
    scheme=st.sampled_from(["Bearer ", "Bearer ", "bearer ", "BEARER  ", "Bearer\t", "Token ", "Basic ", ""]),
    value=st.one_of(forged_tokens(), forged_tokens(), header_values, safe_text.map(lambda s: "Bearer " + s)),
)


@dataclass(frozen=True)
class Fuzzed:
    """One command message as an attacker might publish it."""

    exchange: str  # "commands", or "" (the default exchange, straight into a queue)
    routing_key: str
    type: str | None
    body: bytes
    content_type: str | None
    message_id: str | None
    authorization: Authorization | None
    headers: dict[str, Any]
    reply: bool

    def effective_command(self) -> str | None:
        """The command a correct runner executes, or None when it must refuse the message as malformed."""
        if self.type and self.type != self.routing_key:
            return None
        name = self.type or self.routing_key
        return name if self.exchange == "commands" and name in REAL_COMMANDS else None

    def may_change_state(self) -> bool:
        """A public command that legitimately writes without a token: a valid register or login."""
        name = self.effective_command()
        if name not in ("register", "login") or self.content_type not in (None, "", "application/json"):
            return False
        try:
            COMMAND_PAYLOADS[name].model_validate_json(self.body)
        except ValidationError:
            return False
        return True


def weighted(**choices: int) -> st.SearchStrategy[str]:
    """One of the names, as often as its weight says (Hypothesis would otherwise favour the first)."""
    return st.sampled_from([name for name, weight in choices.items() for _ in range(weight)])


@st.composite
def fuzzed_commands(draw: st.DrawFn) -> Fuzzed:
    # Mostly well-aimed messages, so that most reach the token check rather than the parser.
    if draw(weighted(exchange=4, queue=1)) == "exchange":  # routed on `commands`: the key is a real command
        exchange, routing_key = "commands", draw(st.sampled_from(REAL_COMMANDS))
        kind = draw(weighted(same=4, none=1, other=1, junk=1))
    else:  # straight into a command queue by name, whatever its type says
        exchange, routing_key = "", draw(st.sampled_from(COMMAND_QUEUES))
        kind = draw(weighted(none=1, other=1, junk=1))
    message_type = draw(
        {
            "same": st.just(routing_key),
            "none": st.none(),
            "other": st.sampled_from(REAL_COMMANDS),
            "junk": junk_names,
        }[kind]
    )
    body_kind = draw(weighted(well_formed=3, random=2))
    body = draw(well_formed_payloads(message_type or routing_key) if body_kind == "well_formed" else bodies)
    content_type = draw(
        {
            "json": st.just("application/json"),
            "none": st.none(),
            "other": st.sampled_from(["", "text/plain", "application/python-pickle", "application/json; charset=utf-8"]),
        }[draw(weighted(json=6, none=1, other=1))]
    )
    headers = draw(
        st.dictionaries(st.one_of(st.sampled_from(IDENTITY_HEADERS), st.text(min_size=1, max_size=20)), header_values, max_size=4)
    )
    message = Fuzzed(
        exchange=exchange,
        routing_key=routing_key,
        type=message_type,
        body=body,
        content_type=content_type,
        message_id=draw(st.one_of(st.uuids().map(str), st.none(), safe_text, nasty_text)),
        authorization=draw(authorizations) if draw(weighted(present=4, absent=1)) == "present" else None,
        headers={k: v for k, v in headers.items() if k.lower() != "authorization"},
        reply=draw(weighted(reply=4, no_reply=1)) == "reply",
    )
    assume(not message.may_change_state())
    return message


# -- the rig: a channel of our own, and every reply it receives ----------------------------------


class Rig:
    """Publishes fuzzed messages on a channel of its own and keeps every reply it receives."""

    def __init__(self, channel: AbstractChannel, forge: TokenForge) -> None:
        self.channel = channel
        self.forge = forge
        #: correlation_id -> every reply body received for it
        self.replies: dict[str, list[bytes]] = defaultdict(list)
        self.arrived: dict[str, asyncio.Event] = {}
        #: correlation ids of the messages that asked for a reply
        self.expected: set[str] = set()
        self.sent = 0

    def __repr__(self) -> str:  # Hypothesis prints the fixtures of a failing example
        return f"Rig(sent={self.sent}, replies={sum(map(len, self.replies.values()))})"

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        key = message.correlation_id or ""
        self.replies[key].append(message.body)
        if key in self.arrived:
            self.arrived[key].set()

    async def send(self, fuzzed: Fuzzed) -> bytes | None:
        """Publish `fuzzed`; its first reply when it asked for one."""
        correlation_id = uuid4().hex
        headers = dict(fuzzed.headers)
        if fuzzed.authorization is not None:
            headers[fuzzed.authorization.header] = fuzzed.authorization.render(self.forge)
        if fuzzed.reply:
            self.arrived[correlation_id] = asyncio.Event()
        message = aio_pika.Message(
            fuzzed.body,
            content_type=fuzzed.content_type,
            message_id=fuzzed.message_id,
            type=fuzzed.type,
            headers=headers,
            reply_to=REPLY_TO if fuzzed.reply else None,
            correlation_id=correlation_id,
        )
        exchange = (
            self.channel.default_exchange if fuzzed.exchange == "" else await self.channel.get_exchange(fuzzed.exchange, ensure=False)
        )
        await exchange.publish(message, routing_key=fuzzed.routing_key, mandatory=False)
        self.sent += 1
        if not fuzzed.reply:
            return None
        self.expected.add(correlation_id)
        try:
            await asyncio.wait_for(self.arrived[correlation_id].wait(), 10.0)
        except TimeoutError:
            raise AssertionError("no reply within 10 s") from None
        return self.replies[correlation_id][0]


@pytest.fixture(scope="module")
async def baseline(db: asyncpg.Pool, control: dict[str, User]) -> Fingerprint:
    """The database before the first fuzzed message (after the control users settled)."""
    return await settled_fingerprint(db)


@pytest.fixture(scope="module")
async def control(http: aiohttp.ClientSession, stack: Stack) -> dict[str, User]:
    """Real accounts for the positive control, made before the baseline is taken."""
    return {"user": await register(http, "control"), "admin": await make_admin(http, stack), "target": await register(http, "target")}


@pytest.fixture(scope="module")
async def rig(backends: Backends, forge: TokenForge, baseline: Fingerprint) -> AsyncIterator[Rig]:
    """A connection of our own: direct reply-to answers on the channel that consumes it."""
    connection = await aio_pika.connect_robust(backends.amqp_url)
    channel = await connection.channel()
    made = Rig(channel, forge)
    reply_queue = await channel.get_queue(REPLY_TO, ensure=False)
    await reply_queue.consume(made.on_reply, no_ack=True)
    yield made
    await connection.close()


def check_reply(fuzzed: Fuzzed, raw: bytes) -> dict[str, Any]:
    """The reply, once it is shown well-formed and no more than the message deserved."""
    try:
        reply = json.loads(raw)
    except ValueError:
        raise AssertionError(f"the reply is not JSON: {raw[:200]!r}") from None
    assert isinstance(reply, dict) and type(reply.get("ok")) is bool, f"not a reply: {reply!r}"
    if reply["ok"]:
        assert "result" in reply, f"an ok reply without a result: {reply!r}"
        command = fuzzed.effective_command()
        assert command in CONTRACT_PUBLIC, f"ok: true for {command or fuzzed.type or fuzzed.routing_key!r} without a valid token: {reply!r}"
        return reply
    error = reply.get("error")
    assert isinstance(error, dict), f"an error reply without an error object: {reply!r}"
    status, title, detail = error.get("status"), error.get("title"), error.get("detail")
    assert type(status) is int and 400 <= status <= 599, f"status {status!r} in {reply!r}"
    assert status != 500, f"an unhandled exception (bare 500) answered {reply!r}"
    assert isinstance(title, str) and title, f"title {title!r} in {reply!r}"
    assert isinstance(detail, str) and detail, f"detail {detail!r} in {reply!r}"
    for leak in LEAKS:
        assert leak not in detail and leak not in title, f"{leak!r} leaked into {reply!r}"
    return reply


# -- the tests -----------------------------------------------------------------------------------


@settings(
    max_examples=600,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(fuzzed=fuzzed_commands())
async def test_fuzzed_command_gets_a_well_formed_refusal(rig: Rig, fuzzed: Fuzzed) -> None:
    note(f"message: {fuzzed!r}")
    raw = await rig.send(fuzzed)
    if raw is None:
        event("no reply_to")
        return
    reply = check_reply(fuzzed, raw)
    # Shown by --hypothesis-show-statistics: how far into the runner the messages got.
    event("ok" if reply["ok"] else f"refused {reply['error']['status']}")


#: Messages the fuzzing found mishandled, pinned so that every run checks them (a failing explicit
#: Hypothesis example would stop the random search, so they are a test of their own), with the
#: schema of the service that decides them.
#: A message_id is an idempotency key: one that is not 1-200 visible ASCII characters makes the
#: message malformed (400, parked). A bad request id is only a log field: it is replaced.
FOUND = {
    "NUL in message_id": (Fuzzed("commands", "get-me", "get-me", b"{}", "application/json", "\x00", None, {}, reply=True), "auth"),
    "NUL in x-request-id": (
        Fuzzed(
            "commands",
            "delete-post",
            "delete-post",
            json.dumps({"post_id": str(uuid4())}).encode(),
            "application/json",
            str(uuid4()),
            None,
            {"x-request-id": "a\x00b"},
            reply=True,
        ),
        "posts",
    ),
}


@pytest.mark.parametrize("case", list(FOUND))
async def test_found_message_is_refused_and_audited(rig: Rig, db: asyncpg.Pool, case: str) -> None:
    fuzzed, schema = FOUND[case]
    raw = await rig.send(fuzzed)
    assert raw is not None
    reply = check_reply(fuzzed, raw)
    malformed_id = fuzzed.message_id is not None and "\x00" in fuzzed.message_id
    assert reply["error"]["status"] == (400 if malformed_id else 401), reply
    if not malformed_id:
        denied = await db.fetchval(
            f"SELECT count(*) FROM {schema}.audit_log WHERE decision = 'denied' AND command = $1 AND message_id = $2",
            fuzzed.type,
            fuzzed.message_id,
        )
        assert denied == 1, f"the denial of {fuzzed.type} is not in {schema}.audit_log"


async def test_every_reply_arrived_exactly_once(rig: Rig) -> None:
    if not rig.sent:
        pytest.skip("run with test_fuzzed_command_gets_a_well_formed_refusal: it sends what this checks")
    await asyncio.sleep(0.5)  # time for a duplicate to show up
    wrong = {cid: len(rig.replies.get(cid, [])) for cid in rig.expected if len(rig.replies.get(cid, [])) != 1}
    assert not wrong, f"correlation ids with other than one reply: {wrong}"
    unasked = sorted(set(rig.replies) - rig.expected)
    assert not unasked, f"replies nobody asked for (no reply_to): {unasked}"


async def test_nothing_changed_without_a_valid_token(
    rig: Rig, broker: BrokerProbe, db: asyncpg.Pool, baseline: Fingerprint, wait_until: WaitUntil
) -> None:
    if not rig.sent:
        pytest.skip("run with test_fuzzed_command_gets_a_well_formed_refusal: it sends what this checks")

    async def queues_drained() -> bool:
        counts = [(await broker.channel.declare_queue(q, passive=True)).declaration_result.message_count for q in COMMAND_QUEUES]
        return all(c == 0 for c in counts)

    await wait_until(queues_drained, timeout=10.0)
    await asyncio.sleep(0.3)
    after = await settled_fingerprint(db, like=baseline)
    assert after == baseline, f"{rig.sent} fuzzed messages without a valid token changed {changed_tables(baseline, after)}"


async def test_services_still_serve(broker: BrokerProbe, control: dict[str, User], db: asyncpg.Pool, wait_until: WaitUntil) -> None:
    user, admin, target = control["user"], control["admin"], control["target"]
    me = await broker.command("get-me", {}, token=user.token)
    assert me is not None and me["ok"] is True and me["result"]["id"] == user.id, me
    post = await broker.command("create-post", {"title": "After the fuzz", "body": "Still here"}, token=user.token)
    assert post is not None and post["ok"] is True, post

    async def profile() -> bool:
        return await db.fetchval("SELECT EXISTS (SELECT 1 FROM users.profiles WHERE id = $1)", target.id)

    await wait_until(profile, timeout=5.0)
    ban = await broker.command("ban-user", {"user_id": target.id, "reason": "control"}, token=admin.token)
    assert ban is not None and ban["ok"] is True and ban["result"]["banned"] is True, ban
