"""Revocation takes effect in every service within a second, and survives restarts.

Logout, ban, `set-role` and `revoke-token` must each make every service refuse the token within
one second (401 for a dead session, 403 for a banned account), and each service keeps its own
record, so a restarted service still refuses. The operator commands are run exactly as an
operator types them. Checks go straight to each service through the broker, so the gateway's own
token check cannot hide a service that still honours a dead token.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from uuid import uuid4

import pytest

from tests.support.accounts import User, login, token_claims

SCHEMAS = ("auth", "posts", "users")
POST = {"title": "Still here?", "body": "Checking whether this token still works"}


def status(reply: dict[str, Any] | None) -> int | str:
    assert reply is not None
    return "ok" if reply["ok"] is True else reply["error"]["status"]


async def statuses(broker, token: str) -> dict[str, int | str]:
    """What each service answers this token: auth (get-me), posts (create-post), users (ban-user)."""
    return {
        "auth": status(await broker.command("get-me", {}, token=token)),
        "posts": status(await broker.command("create-post", POST, token=token)),
        "users": status(await broker.command("ban-user", {"user_id": str(uuid4())}, token=token)),
    }


async def refused_everywhere(broker, wait_until, token: str, expected: int) -> None:
    want = {"auth": expected, "posts": expected, "users": expected}

    async def check() -> bool:
        return await statuses(broker, token) == want

    try:
        await wait_until(check, timeout=1.0)
    except AssertionError:
        raise AssertionError(f"expected {want} within 1 s, got {await statuses(broker, token)}") from None


async def in_every_schema(db, table: str, column: str, value: str) -> bool:
    counts = [await db.fetchval(f"SELECT count(*) FROM {schema}.{table} WHERE {column} = $1", value) for schema in SCHEMAS]
    return counts == [1, 1, 1]


async def run_cli(stack, *args: str):
    """The operator command, off the event loop so the broker connection stays serviced."""
    return await asyncio.to_thread(stack.run_cli, *args)


# -- logout ---------------------------------------------------------------------------------------


async def test_logout_is_refused_by_every_service_within_a_second(http, broker, db, new_admin, wait_until) -> None:
    admin: User = await new_admin()
    assert await statuses(broker, admin.token) == {"auth": "ok", "posts": "ok", "users": 404}

    async with http.post("/auth/logout", headers=admin.auth) as response:
        assert response.status == 204

    await refused_everywhere(broker, wait_until, admin.token, 401)
    await wait_until(lambda: in_every_schema(db, "revoked_sessions", "session_id", admin.session_id), timeout=1.0)


# -- ban ------------------------------------------------------------------------------------------


async def test_ban_is_refused_by_every_service_within_a_second(http, broker, db, new_admin, wait_until) -> None:
    moderator = await new_admin()
    # An admin as the victim, so users_service's answer tells "banned" (403) from "not found" (404).
    victim = await new_admin()
    tokens = [victim.token, await login(http, victim.email, victim.password), await login(http, victim.email, victim.password)]
    for token in tokens:
        assert await statuses(broker, token) == {"auth": "ok", "posts": "ok", "users": 404}

    async with http.post(f"/users/{victim.id}/ban", json={"reason": "spam"}, headers=moderator.auth) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["banned"] is True

    for token in tokens:
        await refused_everywhere(broker, wait_until, token, 403)
    await wait_until(lambda: in_every_schema(db, "banned_accounts", "user_id", victim.id), timeout=1.0)
    for token in tokens:
        assert status(await broker.command("logout", {}, token=token)) == 403
    async with http.post("/auth/login", json={"email": victim.email, "password": victim.password}) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
    assert status(await broker.command("login", {"email": victim.email, "password": victim.password})) == 403


# -- set-role -------------------------------------------------------------------------------------


async def test_set_role_promotes_and_demotes_revoking_old_tokens(http, broker, stack, new_user, wait_until) -> None:
    user: User = await new_user()
    target_one, target_two = await new_user("target"), await new_user("target")
    old_token = user.token

    promoted = await run_cli(stack, "set-role", user.email, "admin")
    assert promoted.returncode == 0, promoted.stderr
    assert user.email in promoted.stdout and "admin" in promoted.stdout

    await refused_everywhere(broker, wait_until, old_token, 401)
    admin_token = await login(http, user.email, user.password)
    assert token_claims(admin_token)["role"] == "admin"
    banned = await broker.command("ban-user", {"user_id": target_one.id}, token=admin_token)
    assert status(banned) == "ok", banned
    assert banned["result"]["banned"] is True

    demoted = await run_cli(stack, "set-role", user.email, "user")
    assert demoted.returncode == 0, demoted.stderr
    assert user.email in demoted.stdout and "user" in demoted.stdout

    await refused_everywhere(broker, wait_until, admin_token, 401)
    user_token = await login(http, user.email, user.password)
    assert token_claims(user_token)["role"] == "user"
    assert status(await broker.command("ban-user", {"user_id": target_two.id}, token=user_token)) == 403
    async with http.get(f"/users/{target_two.id}") as response:
        assert (await response.json())["banned"] is False


async def test_set_role_for_unknown_email_fails_clearly(stack) -> None:
    email = f"nobody-{uuid4().hex[:8]}@example.com"
    result = await run_cli(stack, "set-role", email, "admin")
    assert result.returncode != 0
    assert email in result.stderr
    assert "Traceback" not in result.stderr


# -- issue-service-token and revoke-token ---------------------------------------------------------


async def issue_service_token(stack, name: str = "report-bot") -> str:
    result = await run_cli(stack, "issue-service-token", name, "--role", "user", "--ttl", "600")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1].strip()
    assert token.count(".") == 2 and " " not in token, result.stdout
    return token


async def test_service_token_publishes_commands_as_its_account(broker, stack) -> None:
    token = await issue_service_token(stack)
    claims = token_claims(token)
    assert claims["sub_type"] == "service"
    assert claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == 600

    reply = await broker.command("create-post", {"title": "Nightly report", "body": "All good"}, token=token)

    assert status(reply) == "ok", reply
    assert reply["result"]["author_id"] == claims["sub"]


async def test_revoke_token_by_jti_or_sid_is_refused_within_a_second(broker, stack, wait_until) -> None:
    by_jti, by_sid = await issue_service_token(stack), await issue_service_token(stack)
    for token in (by_jti, by_sid):
        assert await statuses(broker, token) == {"auth": "ok", "posts": "ok", "users": 403}

    revoked = await run_cli(stack, "revoke-token", token_claims(by_jti)["jti"])
    assert revoked.returncode == 0, revoked.stderr
    await refused_everywhere(broker, wait_until, by_jti, 401)
    # Only that session ends: the account's other token still works.
    assert await statuses(broker, by_sid) == {"auth": "ok", "posts": "ok", "users": 403}

    revoked = await run_cli(stack, "revoke-token", token_claims(by_sid)["sid"])
    assert revoked.returncode == 0, revoked.stderr
    await refused_everywhere(broker, wait_until, by_sid, 401)


@pytest.mark.parametrize("unknown", [str(uuid4()), "not-an-id"])
async def test_revoke_token_of_unknown_id_fails_clearly(stack, unknown: str) -> None:
    result = await run_cli(stack, "revoke-token", unknown)
    assert result.returncode != 0
    assert unknown in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["set-role", "issue-service-token", "revoke-token"])
async def test_operator_command_help_shows_an_example(stack, command: str) -> None:
    result = await run_cli(stack, command, "--help")
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout.lower()
    assert f"python -m auth_service {command} " in result.stdout


# -- restarts -------------------------------------------------------------------------------------


async def test_revoked_session_stays_refused_after_posts_service_restarts(http, broker, db, stack, new_user, wait_until) -> None:
    user: User = await new_user()
    async with http.post("/auth/logout", headers=user.auth) as response:
        assert response.status == 204
    await wait_until(lambda: in_every_schema(db, "revoked_sessions", "session_id", user.session_id), timeout=1.0)

    try:
        stack.stop("posts")
        stack.start("posts")
        await stack.wait_ready("posts")

        assert status(await broker.command("create-post", POST, token=user.token)) == 401
        fresh = await login(http, user.email, user.password)
        reply = await broker.command("create-post", POST, token=fresh)
        assert status(reply) == "ok", reply
        assert reply["result"]["author_id"] == user.id
    finally:
        process = stack.processes.get("posts")
        if process is None or process.poll() is not None:
            stack.start("posts")
        await stack.wait_ready("posts")


# -- login rate limit -----------------------------------------------------------------------------


def client_address() -> dict[str, str]:
    return {"x-client-address": f"203.0.113.{random.randint(1, 254)}"}


async def broker_login(broker, email: str, password: str, headers: dict[str, str]) -> dict[str, Any]:
    # As the gateway: the only publisher whose x-client-address a service believes.
    reply = await broker.command("login", {"email": email, "password": password}, headers=headers, as_process="gateway")
    assert reply is not None
    return reply


async def test_sixth_failed_login_for_an_account_is_429_even_with_the_right_password(broker, new_user) -> None:
    user: User = await new_user()
    headers = client_address()
    for attempt in range(5):
        assert status(await broker_login(broker, user.email, f"wrong-{attempt}", headers)) == 401

    sixth = await broker_login(broker, user.email, "wrong-again", headers)
    assert status(sixth) == 429, sixth
    assert isinstance(sixth["error"]["retry_after"], int) and sixth["error"]["retry_after"] > 0

    right = await broker_login(broker, user.email, user.password, headers)
    assert status(right) == 429, right
    assert right["error"]["retry_after"] > 0


async def test_a_locked_out_account_does_not_lock_out_others_from_that_address(broker, new_user) -> None:
    user: User = await new_user()
    headers = client_address()
    unknown = f"nobody-{uuid4().hex[:10]}@example.com"
    for _ in range(5):
        assert status(await broker_login(broker, unknown, "whatever-password", headers)) == 401
    assert status(await broker_login(broker, unknown, "whatever-password", headers)) == 429

    reply = await broker_login(broker, user.email, user.password, headers)
    assert status(reply) == "ok", reply
    assert reply["result"]["token_type"] == "Bearer"
