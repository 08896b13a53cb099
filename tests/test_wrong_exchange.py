"""A message slipped into a service's queue through the default exchange is refused.

Every process may write to the default exchange (it needs that to send replies), and the default
exchange reaches any queue by name, so broker permissions cannot stop a compromised service
dropping a forged event into `users.events`. The runner closes that gap: commands are taken only
from the `commands` exchange and events only from `events`, where topic permissions say who may
publish which key.
"""

from __future__ import annotations

import json
from uuid import uuid4

import asyncpg
import pytest

from tests.support.accounts import User
from tests.support.broker import BrokerProbe


async def test_a_forged_ban_through_the_default_exchange_bans_nobody(broker: BrokerProbe, db: asyncpg.Pool, new_user) -> None:
    victim: User = await new_user("victim")
    await broker.dead_letters("users.events")
    event_id = str(uuid4())
    body = {"event_id": event_id, "occurred_at": "2026-01-01T00:00:00+00:00", "user_id": victim.id, "by": None, "reason": "forged"}
    await broker.to_queue("users.events", json.dumps(body).encode(), message_id=event_id)
    parked = await broker.parked("users.events", lambda m: m.message_id == event_id, timeout=3)
    assert b"events exchange" in str(parked.headers.get("x-dead-letter-reason")).encode()
    assert await db.fetchval("SELECT count(*) FROM users.banned_accounts WHERE user_id = $1", victim.id) == 0
    me = await broker.command("get-me", {}, token=victim.token)
    assert me is not None and me["ok"] is True


@pytest.mark.parametrize("command", ["create-post", "delete-post"])
async def test_a_command_through_the_default_exchange_is_refused(broker: BrokerProbe, db: asyncpg.Pool, new_user, command: str) -> None:
    user: User = await new_user("sideways")
    await broker.dead_letters("posts.commands")
    message_id = str(uuid4())
    payload = {"title": "sideways", "body": "b"} if command == "create-post" else {"post_id": str(uuid4())}
    await broker.to_queue(
        "posts.commands",
        json.dumps(payload).encode(),
        message_id=message_id,
        type=command,
        headers={"authorization": f"Bearer {user.token}"},
    )
    await broker.parked("posts.commands", lambda m: m.message_id == message_id, timeout=3)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0
