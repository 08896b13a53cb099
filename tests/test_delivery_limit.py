"""A message that keeps failing is not retried forever: after the quorum queue's delivery limit it
is parked in `<queue>.dead` (by the runner, redacted, when the runner is the consumer; by RabbitMQ
otherwise), where the operator commands find it, say why, and can send it back once the cause is
fixed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from uuid import uuid4

import asyncpg

from shared.broker import DELIVERY_LIMIT
from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.stack import ROOT, Stack


async def test_a_message_past_the_delivery_limit_is_parked_and_can_be_replayed(
    stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, new_user, wait_until
) -> None:
    user: User = await new_user("poison")
    await broker.dead_letters("posts.commands")
    message_id = str(uuid4())
    stack.stop("posts")  # a consumer of our own stands in for one that crashes on this message
    try:
        channel = await broker.open_channel()  # a raw consumer standing in for the service
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue("posts.commands", ensure=False)
        await broker.command("create-post", {"title": "poison", "body": "b"}, token=user.token, message_id=message_id, reply=False)
        deliveries = 0
        while deliveries <= DELIVERY_LIMIT + 1:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break  # RabbitMQ has taken it away: parked
            assert message.message_id == message_id
            deliveries += 1
            await message.nack(requeue=True)  # what a crash before the ack amounts to
        await channel.close()
        assert deliveries == DELIVERY_LIMIT + 1, f"delivered {deliveries} times with a limit of {DELIVERY_LIMIT}"

        listing = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shared.dead_letters", "list", "posts.commands"],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert message_id in listing.stdout and "delivery_limit" in listing.stdout, listing.stdout
    finally:
        stack.start("posts")
        await stack.wait_ready("posts")

    # The cause is fixed (the service is back): replay sends it where it was first published.
    replay = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.dead_letters", "replay", "posts.commands", "--id", message_id],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr

    async def created() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id))

    await wait_until(created, timeout=5)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 1


async def test_the_runner_parks_a_command_that_keeps_failing_before_rabbitmq_would_keep_its_token(
    stack: Stack, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    """RabbitMQ parks a message past the delivery limit as it is, bearer token and any password in
    clear. The runner sees the count first: on the last delivery it parks the command itself,
    redacted, and does not run it again."""
    user: User = await new_user("poison-redacted")
    await broker.dead_letters("posts.commands")
    message_id = str(uuid4())
    title = f"poison-{uuid4().hex}"
    stack.stop("posts")
    try:
        channel = await broker.open_channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue("posts.commands", ensure=False)
        await broker.command("create-post", {"title": title, "body": "b"}, token=user.token, message_id=message_id, reply=False)
        for _ in range(DELIVERY_LIMIT):  # every delivery but the last dies before its ack
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            assert message is not None and message.message_id == message_id
            await message.nack(requeue=True)
        await channel.close()
    finally:
        stack.start("posts")
        await stack.wait_ready("posts")

    parked = await broker.parked("posts.commands", lambda m: m.message_id == message_id, timeout=15)
    headers = parked.headers or {}
    assert "set aside" in str(headers.get("x-dead-letter-reason")), headers
    assert headers.get("authorization") == "[redacted]" and "authorization" in str(headers.get("x-redacted")), headers
    assert user.token not in parked.body.decode() and user.token not in str(headers)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 0
