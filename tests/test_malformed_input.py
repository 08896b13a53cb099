"""Bad input gets a clear error, is parked in a dead-letter queue, and the service keeps running.

The contract: a command that is not JSON, has an unknown type or a malformed payload gets an error
reply (400, 413 or 422) and lands in `<service>.commands.dead` with a reason, without a live
credential; a malformed event lands in `<service>.events.dead`; the gateway answers the same
mistakes with problem+json and never a 500. Every case ends with a positive control: the same
service still does real work afterwards.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared.declarations import SERVICE_NAMES
from tests.support.accounts import User, login

TWO_MB = 2 * 1024 * 1024


def header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def assert_error_reply(reply: dict[str, Any] | None, status: int) -> None:
    assert reply is not None
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert error["status"] == status, reply
    assert isinstance(error["title"], str) and error["title"]
    assert isinstance(error["detail"], str) and error["detail"], reply


def assert_no_live_credential(message: AbstractIncomingMessage, token: str) -> None:
    signature = token.rsplit(".", 1)[1]
    for name, value in (message.headers or {}).items():
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        assert signature not in text, f"dead-lettered header {name!r} still carries the caller's token"
    assert signature.encode() not in message.body


# -- straight onto the broker ---------------------------------------------------------------------

VALID_POST = {"title": "Hello", "body": "World"}

# id: (routing key, message type (True = same as routing key), payload or raw body, expected status)
POSTS_CASES: dict[str, tuple[str, Any, Any, int]] = {
    "body not JSON": ("create-post", True, b"{this is not json", 400),
    "unknown type": ("create-post", "nuke-everything", VALID_POST, 422),
    "type differs from routing key": ("create-post", "delete-post", VALID_POST, 422),
    "wrong field types": ("create-post", True, {"title": 5, "body": "x"}, 422),
    "get-post non-UUID id": ("get-post", True, {"post_id": "not-a-uuid"}, 422),
    "delete-post non-UUID id": ("delete-post", True, {"post_id": "12345"}, 422),
    "extra field": ("create-post", True, {**VALID_POST, "author_id": str(uuid4())}, 422),
    "JSON array body": ("create-post", True, b'[{"title": "Hello", "body": "World"}]', 422),
    "2 MB body": ("create-post", True, json.dumps({"title": "big", "body": "x" * TWO_MB}).encode(), 413),
}


@pytest.mark.parametrize("case", POSTS_CASES.values(), ids=list(POSTS_CASES))
async def test_posts_service_refuses_and_dead_letters_malformed_command(case, broker, db, new_user, wait_until) -> None:
    routing_key, message_type, payload, status = case
    user: User = await new_user("malformed")
    await broker.dead_letters("posts.commands")
    message_id = str(uuid4())
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    reply = await broker.command(routing_key, body=raw, token=user.token, message_type=message_type, message_id=message_id)

    assert_error_reply(reply, status)
    dead = await broker.parked("posts.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert header(dead, "x-dead-letter-reason"), "a dead-lettered command must say why"
    assert_no_live_credential(dead, user.token)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0

    control = await broker.command("create-post", VALID_POST, token=user.token)
    assert control is not None and control["ok"] is True, control
    assert control["result"]["author_id"] == user.id


def register_payload(email: str) -> dict[str, str]:
    return {"email": email, "password": "correct-horse-battery", "display_name": "Mallory"}


AUTH_CASES: dict[str, tuple[str, Any, Any, int]] = {
    "login body not JSON": ("login", True, b"email=a@b.c&password=x", 400),
    "get-me body not JSON": ("get-me", True, b"\xff\xfe not json", 400),
    "unknown type": ("login", "nuke-everything", {"email": "a@example.com", "password": "x"}, 422),
    "type differs from routing key": ("register", "login", register_payload("typed-{uid}@example.com"), 422),
    "wrong field types": ("register", True, {"email": 5, "password": ["x"], "display_name": None}, 422),
    "extra field": ("get-me", True, {"user_id": str(uuid4())}, 422),
    "extra field on register": ("register", True, {**register_payload("extra-{uid}@example.com"), "role": "admin"}, 422),
    "JSON array body": ("login", True, b'[{"email": "a@example.com", "password": "x"}]', 422),
    "2 MB body": ("register", True, json.dumps(register_payload("big-{uid}@example.com") | {"display_name": "x" * TWO_MB}).encode(), 413),
}


@pytest.mark.parametrize("case", AUTH_CASES.values(), ids=list(AUTH_CASES))
async def test_auth_service_refuses_and_dead_letters_malformed_command(case, broker, db, new_user, wait_until) -> None:
    routing_key, message_type, payload, status = case
    user: User = await new_user("malformed")
    uid = uuid4().hex
    if not isinstance(payload, bytes):
        payload = {k: v.replace("{uid}", uid) if isinstance(v, str) else v for k, v in payload.items()}
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await broker.dead_letters("auth.commands")
    message_id = str(uuid4())

    reply = await broker.command(routing_key, body=raw, token=user.token, message_type=message_type, message_id=message_id)

    assert_error_reply(reply, status)
    dead = await broker.parked("auth.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert header(dead, "x-dead-letter-reason"), "a dead-lettered command must say why"
    assert_no_live_credential(dead, user.token)
    assert b"correct-horse-battery" not in dead.body, "a parked command keeps no password (test_parked_secrets.py)"
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE email LIKE $1", f"%{uid}%") == 0

    control = await broker.command("get-me", {}, token=user.token)
    assert control is not None and control["ok"] is True, control
    assert control["result"]["id"] == user.id


async def test_dead_lettered_public_command_does_not_keep_a_capitalised_authorization_header(broker, new_user, wait_until) -> None:
    """HTTP habit writes `Authorization`; a parked message must not hold the credential either way."""
    user: User = await new_user("malformed")
    await broker.dead_letters("auth.commands")
    message_id = str(uuid4())

    reply = await broker.command("login", body=b"{not json", headers={"Authorization": f"Bearer {user.token}"}, message_id=message_id)

    assert_error_reply(reply, 400)
    dead = await broker.parked("auth.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert_no_live_credential(dead, user.token)


@pytest.mark.parametrize("token", [None, "not-a-jwt"], ids=["no token", "garbage token"])
async def test_a_malformed_protected_command_is_parked_whoever_sent_it(broker, db, wait_until, token) -> None:
    """Decode and validate come before authorize: a non-JSON create-post is a 400 and parked,
    not a 401 that is acked and forgotten."""
    await broker.dead_letters("posts.commands")
    message_id = str(uuid4())
    headers = {} if token is None else {"authorization": f"Bearer {token}"}

    reply = await broker.command("create-post", body=b"{not json", headers=headers, message_id=message_id)

    assert_error_reply(reply, 400)
    dead = await broker.parked("posts.commands", lambda m: m.message_id == message_id, timeout=3.0)
    assert header(dead, "x-dead-letter-reason")


async def test_services_are_still_running_after_malformed_commands(stack) -> None:
    for name in ("auth", "posts"):
        assert stack.processes[name].poll() is None, f"{name} exited:\n{stack.logs(name)}"
        async with aiohttp.ClientSession() as client, client.get(stack.http_url(name) + "/readyz") as response:
            assert response.status == 200


# -- through the gateway --------------------------------------------------------------------------


async def assert_problem(response: aiohttp.ClientResponse, *statuses: int) -> None:
    assert response.status in statuses, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json(content_type=None)
    assert problem["status"] == response.status
    assert problem["type"] and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]


async def test_gateway_malformed_json_is_400(http, new_user) -> None:
    user = await new_user()
    headers = {**user.auth, "Content-Type": "application/json"}
    async with http.post("/posts", data=b'{"title": "Hello", "body": ', headers=headers) as response:
        await assert_problem(response, 400)
    async with http.post("/auth/login", data=b"not json at all", headers={"Content-Type": "application/json"}) as response:
        await assert_problem(response, 400)


async def test_gateway_wrong_types_are_422(http, new_user) -> None:
    user = await new_user()
    async with http.post("/posts", json={"title": 5, "body": "x"}, headers=user.auth) as response:
        await assert_problem(response, 422)
    async with http.post("/posts", json=[VALID_POST], headers=user.auth) as response:
        await assert_problem(response, 422)
    async with http.post("/auth/register", json={"email": 5, "password": 6, "display_name": 7}) as response:
        await assert_problem(response, 422)


async def test_gateway_non_uuid_path_id_is_404_or_422(http, new_user, new_admin) -> None:
    user = await new_user()
    admin = await new_admin()
    for method, path, headers in (
        ("GET", "/posts/not-a-uuid", {}),
        ("DELETE", "/posts/not-a-uuid", user.auth),
        ("GET", "/users/123", {}),
        ("POST", "/users/not-a-uuid/ban", admin.auth),
    ):
        async with http.request(method, path, headers=headers) as response:
            await assert_problem(response, 404, 422)


async def test_gateway_two_megabyte_body_is_413(http, new_user) -> None:
    user = await new_user()
    big = json.dumps({"title": "big", "body": "x" * TWO_MB}).encode()
    async with http.post("/posts", data=big, headers={**user.auth, "Content-Type": "application/json"}) as response:
        await assert_problem(response, 413)
    big_register = json.dumps(register_payload(f"big-{uuid4().hex}@example.com") | {"display_name": "x" * TWO_MB})
    async with http.post("/auth/register", data=big_register.encode(), headers={"Content-Type": "application/json"}) as response:
        await assert_problem(response, 413)


async def test_gateway_still_serves_after_bad_requests(http, new_user) -> None:
    user = await new_user()
    async with http.post("/posts", data=b"{", headers={**user.auth, "Content-Type": "application/json"}) as response:
        await assert_problem(response, 400)
    async with http.post("/posts", json=VALID_POST, headers=user.auth) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["author_id"] == user.id
    async with http.get("/posts", params={"limit": "1"}) as response:
        assert response.status == 200


# -- malformed events -----------------------------------------------------------------------------

EVENT_CONSUMERS = SERVICE_NAMES  # every service hears session.revoked and user.banned


async def test_malformed_events_are_dead_lettered_and_nothing_crashes(stack, broker, db, http, new_user, wait_until) -> None:
    for service in EVENT_CONSUMERS:
        await broker.dead_letters(f"{service}.events")
    marker = uuid4().hex
    not_json = f"not json {marker}".encode()
    bad_user_id = {
        "event_id": str(uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "user_id": f"not-a-uuid-{marker}",
        "by": None,
        "reason": "malformed",
    }

    await broker.event("user.banned", not_json)
    await broker.event("user.banned", bad_user_id)

    for service in EVENT_CONSUMERS:
        drained: list[AbstractIncomingMessage] = []

        async def both_parked(
            queue: str = f"{service}.events", drained: list[AbstractIncomingMessage] = drained
        ) -> list[AbstractIncomingMessage]:
            drained.extend(await broker.dead_letters(queue))
            hits = [next((m for m in drained if e in m.body), None) for e in (not_json, marker.encode())]
            return [hit for hit in hits if hit is not None] if all(hits) else []

        for dead in await wait_until(both_parked, timeout=3.0):
            assert header(dead, "x-dead-letter-reason"), f"{service}: a dead-lettered event must say why"
        assert stack.processes[service].poll() is None, f"{service} exited:\n{stack.logs(service)}"

    # Commands still work on every service ...
    user = await new_user()
    me = await broker.command("get-me", {}, token=user.token)
    assert me is not None and me["ok"] is True, me
    post = await broker.command("create-post", VALID_POST, token=user.token)
    assert post is not None and post["ok"] is True, post
    profile = await broker.command("get-user", {"user_id": user.id})
    assert profile is not None and profile["ok"] is True, profile

    # ... and so do the event consumers: a real logout still reaches posts and users.
    async with http.post("/auth/logout", headers=user.auth) as response:
        assert response.status == 204

    async def revoked_everywhere() -> bool:
        rows = [
            await db.fetchval(f"SELECT count(*) FROM {schema}.revoked_sessions WHERE session_id = $1", user.session_id)
            for schema in ("posts", "users")
        ]
        return rows == [1, 1]

    await wait_until(revoked_everywhere, timeout=1.0)
    fresh = await login(http, user.email, user.password)
    assert fresh


async def test_a_nul_character_is_a_422_not_a_500(http, broker, db, new_user) -> None:
    """PostgreSQL text cannot hold NUL: the payload models refuse it before it reaches the database
    (found by schemathesis as a 500)."""
    user: User = await new_user("nul")
    async with http.post("/posts", json={"title": "a\x00b", "body": "b"}, headers=user.auth) as response:
        assert response.status == 422, await response.text()
        assert "NUL" in (await response.json())["detail"]
    reply = await broker.command("create-post", {"title": "t", "body": "x\x00"}, token=user.token)
    assert_error_reply(reply, 422)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0
