"""No input from any caller is a 500: values a client chose that reach SQL or a Python conversion.

A well-formed command with a bad value (a cursor this service never gave out, a number out of
PostgreSQL's range, digits that only Unicode calls digits) is a refusal like any other: a 4xx reply,
and the message is acked, never parked in `<service>.commands.dead` (parking is for messages that
cannot be a command at all). Checked through the gateway and straight over the broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from shared.commands import audit_command_name
from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack

NOT_OURS = "cursor: is not a cursor this service gave out"


def b64(value: Any) -> str:
    """A cursor as this service encodes one: base64url of JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


#: Cursors that decode as base64 and JSON but were never given out.
FORGED_POST_CURSORS = {
    "an int for the id": b64(["2020-01-01T00:00:00+00:00", 5]),
    "one element": b64(["x"]),
    "an object": b64({"created_at": "2020-01-01T00:00:00+00:00", "id": str(uuid4())}),
    "a two-key object": b64({"a": 1, "b": 2}),
    "a null": b64(None),
    "a number": b64(12),
    "a nested list": b64([["2020-01-01T00:00:00+00:00"], [str(uuid4())]]),
    "a date before year 1 in UTC": b64(["0001-01-01T00:00:00+14:00", str(uuid4())]),
    "a date after year 9999 in UTC": b64(["9999-12-31T23:59:59-14:00", str(uuid4())]),
    "a huge year": b64(["99999999-01-01T00:00:00+00:00", str(uuid4())]),
    "a naive date": b64(["2020-01-01T00:00:00", str(uuid4())]),
    "a null date": b64([None, str(uuid4())]),
    "not UTF-8": base64.urlsafe_b64encode(b"\xff\xfe[1,2]").decode(),
    "non-ASCII text": "ünïcødé",
    "unicode digits": "²³¹",
}

#: Audit cursors that are no row id this service gave out.
FORGED_AUDIT_CURSORS = {
    "a superscript digit": "²",
    "Arabic-Indic digits": "٣٤",
    "30 digits": "9" * 30,
    "just over int8": str(2**63),
    "negative": "-1",
    "spaces": " 1",
}


async def assert_not_parked(broker: BrokerProbe, queue: str, message_id: str) -> None:
    """Give a parking publish time to land, then show nothing with `message_id` was parked."""
    await asyncio.sleep(0.5)
    parked = [m for m in await broker.dead_letters(queue) if m.message_id == message_id]
    assert not parked, f"{message_id} was parked in {queue}.dead: {parked[0].headers.get('x-dead-letter-reason')!r}"


@pytest.mark.parametrize("case", list(FORGED_POST_CURSORS))
async def test_forged_post_cursor_over_http_is_422(http: aiohttp.ClientSession, case: str) -> None:
    async with http.get("/posts", params={"cursor": FORGED_POST_CURSORS[case]}) as response:
        body = await response.json(content_type=None)
        assert response.status == 422, body
        assert body["detail"] == NOT_OURS, body


@pytest.mark.parametrize("case", list(FORGED_POST_CURSORS))
async def test_forged_post_cursor_over_the_broker_is_422_and_not_parked(broker: BrokerProbe, case: str) -> None:
    message_id = str(uuid4())
    reply = await broker.command("list-posts", {"cursor": FORGED_POST_CURSORS[case]}, message_id=message_id)
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"]["status"] == 422 and reply["error"]["detail"] == NOT_OURS, reply
    await assert_not_parked(broker, "posts.commands", message_id)


async def test_a_cursor_given_out_still_pages(http: aiohttp.ClientSession, new_user: Any) -> None:
    """The positive control: validation refuses forgeries, not the cursors we hand out."""
    author: User = await new_user("pager")
    for n in range(3):
        async with http.post("/posts", json={"title": f"Page {n}", "body": "x"}, headers=author.auth) as response:
            assert response.status == 201
    async with http.get("/posts", params={"limit": "1"}) as response:
        first = await response.json()
    assert first["next_cursor"]
    async with http.get("/posts", params={"limit": "1", "cursor": first["next_cursor"]}) as response:
        assert response.status == 200, await response.text()
        second = await response.json()
    assert second["items"] and second["items"][0]["id"] != first["items"][0]["id"]


@pytest.mark.parametrize("case", list(FORGED_AUDIT_CURSORS))
async def test_forged_audit_cursor_over_the_broker_is_422_and_not_parked(broker: BrokerProbe, admin: User, case: str) -> None:
    message_id = str(uuid4())
    reply = await broker.command(
        audit_command_name("posts"), {"cursor": FORGED_AUDIT_CURSORS[case]}, token=admin.token, message_id=message_id
    )
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"]["status"] == 422 and reply["error"]["detail"] == NOT_OURS, reply
    await assert_not_parked(broker, "posts.commands", message_id)


@pytest.mark.parametrize("case", list(FORGED_AUDIT_CURSORS))
async def test_forged_audit_cursor_over_http_is_422(http: aiohttp.ClientSession, admin: User, case: str) -> None:
    async with http.get("/audit", params={"service": "users", "cursor": FORGED_AUDIT_CURSORS[case]}, headers=admin.auth) as response:
        body = await response.json(content_type=None)
        assert response.status == 422, body
        assert body["detail"] == NOT_OURS, body


@pytest.mark.parametrize("limit", ["²", "9" * 30, "1e3", "-1", "0", "101", "٣٠٠"])
async def test_hostile_audit_limit_over_http_is_422(http: aiohttp.ClientSession, admin: User, limit: str) -> None:
    async with http.get("/audit", params={"service": "auth", "limit": limit}, headers=admin.auth) as response:
        assert response.status == 422, await response.text()


# -- metric labels take only declared values ----------------------------------------------------


async def metric_series(url: str) -> list[str]:
    """The sample lines of a /metrics page (one per series and bucket), once the messages sent
    before have been counted (a reply goes out before its count)."""
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        return [line for line in (await response.text()).splitlines() if line and not line.startswith("#")]


async def test_made_up_command_types_add_no_metric_series(broker: BrokerProbe, stack: Stack) -> None:
    """Each message below is malformed (its type is no command, or not its routing key's) and
    counted; if the count were labelled by the wire name, every message would add series."""
    url = stack.http_url("posts")

    async def made_up(n: int) -> None:
        for _ in range(n):
            reply = await broker.command("get-post", {"post_id": str(uuid4())}, message_type=f"made-up-{uuid4().hex}")
            assert reply is not None and reply["error"]["status"] == 422, reply

    await made_up(1)  # the `unknown` series exists from here on
    before = await metric_series(url)
    await made_up(60)
    after = await metric_series(url)
    assert len(after) == len(before), f"{len(after) - len(before)} new series for 60 made-up types"
    assert not [line for line in after if "made-up-" in line]
    assert any('command="unknown"' in line for line in after)


async def test_made_up_http_methods_and_paths_add_no_metric_series(stack: Stack) -> None:
    url = stack.gateway_url

    async def made_up(n: int) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                token = uuid4().hex[:8].upper()
                async with session.request(f"X{token}", f"{url}/posts/{uuid4()}/{token}") as response:
                    assert response.status in (400, 404, 405), await response.text()

    await made_up(1)
    await metric_series(url)  # the gateway counts its own /metrics too: that series exists from here on
    before = await metric_series(url)
    await made_up(40)
    after = await metric_series(url)
    assert len(after) == len(before), f"{len(after) - len(before)} new series for 40 made-up methods and paths"


# -- tables an outsider can grow ------------------------------------------------------------------


async def test_a_failed_login_clears_expired_failures(broker: BrokerProbe, db: asyncpg.Pool) -> None:
    """Each failed login is a row (for the rate limit); each also clears rows older than the
    window, so made-up emails cannot grow the table past one window's worth."""
    stale = [f"stale-{uuid4().hex}@example.com" for _ in range(50)]
    await db.executemany(
        "INSERT INTO auth.login_failures (account_key, failed_at) VALUES ($1, now() - interval '2 hours')", [(e,) for e in stale]
    )
    reply = await broker.command("login", {"email": f"nobody-{uuid4().hex}@example.com", "password": "wrong password"})
    assert reply is not None and reply["error"]["status"] == 401, reply
    left = await db.fetchval("SELECT count(*) FROM auth.login_failures WHERE account_key = ANY($1)", stale)
    assert left == 0, f"{left} failures older than the window are still kept"
