"""A message that keeps failing is not retried forever: after the quorum queue's delivery limit
RabbitMQ parks it in `<queue>.dead`, where the operator commands find it, say why, and can send it
back once the cause is fixed."""

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
