"""The audit trail: every authorization decision is kept by the service that made it, logged as
one structured line, and readable by admins (and only admins) through GET /audit."""

from __future__ import annotations

import json
from uuid import uuid4

import aiohttp
import asyncpg

from gateway.schemas import AuditPage
from tests.support.accounts import User, token_claims
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack


async def make_post(http: aiohttp.ClientSession, author: User) -> str:
    async with http.post("/posts", json={"title": "audited", "body": "b"}, headers=author.auth) as response:
        assert response.status == 201
        return str((await response.json())["id"])


async def test_a_denial_and_an_allowance_are_both_recorded(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    author: User = await new_user("author")
    intruder: User = await new_user("intruder")
    post_id = await make_post(http, author)
    denied_id, allowed_id = str(uuid4()), str(uuid4())

    refused = await broker.command("delete-post", {"post_id": post_id}, token=intruder.token, message_id=denied_id)
    assert refused is not None and refused["error"]["status"] == 403
    done = await broker.command("delete-post", {"post_id": post_id}, token=author.token, message_id=allowed_id)
    assert done is not None and done["ok"] is True

    rows = {
        r["message_id"]: r
        for r in await db.fetch("SELECT * FROM posts.audit_log WHERE message_id = ANY($1::text[])", [denied_id, allowed_id])
    }
    assert rows[denied_id]["decision"] == "denied"
    assert rows[denied_id]["caller"] == f"user:{intruder.id}" and rows[denied_id]["caller_kind"] == "user"
    assert rows[denied_id]["resource"] == f"post:{post_id}" and rows[denied_id]["command"] == "delete-post"
    assert "permission" in rows[denied_id]["reason"]
    assert rows[allowed_id]["decision"] == "allowed" and rows[allowed_id]["caller"] == f"user:{author.id}"


async def test_a_bad_token_is_recorded_as_an_anonymous_denial(broker: BrokerProbe, db: asyncpg.Pool) -> None:
    message_id = str(uuid4())
    reply = await broker.command("create-post", {"title": "t", "body": "b"}, token="garbage", message_id=message_id)
    assert reply is not None and reply["error"]["status"] == 401
    row = await db.fetchrow("SELECT * FROM posts.audit_log WHERE message_id = $1", message_id)
    assert row is not None and row["decision"] == "denied" and row["caller"] == "anonymous"


async def test_a_replay_is_recorded_as_replayed(http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    author: User = await new_user("replayer")
    message_id = str(uuid4())
    for _ in range(2):
        reply = await broker.command("create-post", {"title": "once", "body": "b"}, token=author.token, message_id=message_id)
        assert reply is not None and reply["ok"] is True
    decisions = [
        r["decision"] for r in await db.fetch("SELECT decision FROM posts.audit_log WHERE message_id = $1 ORDER BY id", message_id)
    ]
    assert decisions == ["allowed", "replayed"]


async def test_a_service_account_shows_as_such(stack: Stack, broker: BrokerProbe, db: asyncpg.Pool) -> None:
    result = stack.run_cli("issue-service-token", f"audit-bot-{uuid4().hex[:6]}", "--role", "user")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    message_id = str(uuid4())
    reply = await broker.command("create-post", {"title": "bot", "body": "b"}, token=token, message_id=message_id)
    assert reply is not None and reply["ok"] is True
    row = await db.fetchrow("SELECT caller, caller_kind FROM posts.audit_log WHERE message_id = $1", message_id)
    assert row is not None and row["caller_kind"] == "service"
    assert row["caller"] == f"service:{token_claims(token)['sub']}"


async def test_each_decision_is_one_structured_log_line(stack: Stack, broker: BrokerProbe, new_user) -> None:
    intruder: User = await new_user("logged")
    message_id = str(uuid4())
    await broker.command("delete-post", {"post_id": str(uuid4())}, token=intruder.token, message_id=message_id)
    lines = [
        json.loads(line) for line in (stack.log_dir / "posts.log").read_text().splitlines() if message_id in line and line.startswith("{")
    ]
    decisions = [entry for entry in lines if entry["message"] == "authorization decision"]
    assert len(decisions) == 1, lines
    entry = decisions[0]
    assert entry["decision"] == "denied" and entry["caller"] == f"user:{intruder.id}"
    assert entry["command"] == "delete-post" and entry["resource"].startswith("post:")
    assert entry["time"] and entry["reason"] == "No post with that id"


async def test_admins_read_the_audit_over_http(http: aiohttp.ClientSession, broker: BrokerProbe, new_user, new_admin) -> None:
    admin: User = await new_admin()
    intruder: User = await new_user("reader")
    for _ in range(2):
        await broker.command("delete-post", {"post_id": str(uuid4())}, token=intruder.token)

    async with http.get("/audit", params={"service": "posts", "decision": "denied", "limit": "1"}, headers=admin.auth) as response:
        assert response.status == 200, await response.text()
        first = AuditPage.model_validate(await response.json())
    assert len(first.items) == 1 and first.items[0].decision == "denied" and first.next_cursor
    async with http.get(
        "/audit", params={"service": "posts", "decision": "denied", "limit": "1", "cursor": first.next_cursor}, headers=admin.auth
    ) as response:
        second = AuditPage.model_validate(await response.json())
    assert second.items[0].id < first.items[0].id


async def test_only_admins_read_the_audit(http: aiohttp.ClientSession, broker: BrokerProbe, new_user) -> None:
    user: User = await new_user("curious")
    async with http.get("/audit", params={"service": "auth"}, headers=user.auth) as response:
        assert response.status == 403
    async with http.get("/audit", params={"service": "auth"}) as response:
        assert response.status == 401
    async with http.get("/audit", params={"service": "nope"}, headers=user.auth) as response:
        assert response.status == 422
    # Straight to the broker, past the gateway: the service itself refuses.
    reply = await broker.command("list-audit.users", {}, token=user.token)
    assert reply is not None and reply["error"]["status"] == 403
