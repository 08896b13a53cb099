"""`GET /live` on the session's gateway: what the contract's "Live updates" promises a listener.

Changes made through the HTTP API, and events put straight onto the broker by their owner, reach
every open stream within a second as `event:` routing key, `id:` event_id, `data:` public fields;
an outsider's event never does; a reconnect with Last-Event-ID gets what it missed, or `reload`.
The event ids are checked against the events the services published (a tap on the exchange).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aiohttp

from gateway.live import QUEUE_SIZE
from shared.events import EVENTS
from tests.support.accounts import User
from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.metrics import sample_of
from tests.support.sse import SseMessage, SseStream, live_streams, open_stream
from tests.support.stack import Stack

PUBLIC_KEYS = ("post.created", "post.edited", "post.deleted", "user.banned")


async def arrived_everywhere(streams: list[SseStream], wait_until: WaitUntil, event: str, since: float, **fields: Any) -> list[SseMessage]:
    """The one `event` with `fields` on each stream, each within a second of `since`."""

    async def on_all() -> bool:
        return all(s.find(event, **fields) for s in streams)

    await wait_until(on_all, timeout=1.0, interval=0.01)
    found = [s.find(event, **fields) for s in streams]
    assert all(len(f) == 1 for f in found), found
    messages = [f[0] for f in found]
    assert max(m.arrived for m in messages) - since < 1.0
    return messages


def post_created(post_id: str | None = None) -> dict[str, str]:
    return {
        "event_id": str(uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "post_id": post_id or str(uuid4()),
        "author_id": str(uuid4()),
    }


async def test_a_stream_is_an_uncached_event_stream_with_a_retry_hint(http: aiohttp.ClientSession) -> None:
    async with live_streams(http, "/live", 1) as (stream,):
        headers = stream.response.headers
        assert headers["Content-Type"].startswith("text/event-stream")
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Accel-Buffering"] == "no"
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])
        assert stream.retry is not None and stream.retry > 0


async def test_api_changes_reach_every_open_stream_within_a_second(
    http: aiohttp.ClientSession, broker: BrokerProbe, admin: User, new_user, wait_until: WaitUntil
) -> None:
    author: User = await new_user("live")
    secret_reason = f"private reason {uuid4().hex}"
    async with live_streams(http, "/live", 3) as streams, broker.tap(PUBLIC_KEYS, wait_until) as tap:
        started = time.monotonic()
        async with http.post("/posts", json={"title": "live", "body": "b"}, headers=author.auth) as response:
            assert response.status == 201
            post_id = (await response.json())["id"]
        created = await arrived_everywhere(streams, wait_until, "post.created", started, post_id=post_id)

        started = time.monotonic()
        async with http.patch(f"/posts/{post_id}", json={"title": "live, edited"}, headers=author.auth) as response:
            assert response.status == 200
        edited = await arrived_everywhere(streams, wait_until, "post.edited", started, post_id=post_id)

        started = time.monotonic()
        async with http.delete(f"/posts/{post_id}", headers=author.auth) as response:
            assert response.status == 204
        deleted = await arrived_everywhere(streams, wait_until, "post.deleted", started, post_id=post_id)

        started = time.monotonic()
        async with http.post(f"/users/{author.id}/ban", json={"reason": secret_reason}, headers=admin.auth) as response:
            assert response.status == 200, await response.text()
        banned = await arrived_everywhere(streams, wait_until, "user.banned", started, user_id=author.id)

        for key, messages, match in (
            ("post.created", created, {"post_id": post_id}),
            ("post.edited", edited, {"post_id": post_id}),
            ("post.deleted", deleted, {"post_id": post_id}),
            ("user.banned", banned, {"user_id": author.id}),
        ):
            published = await tap.captured(key, **match)
            public = {name: published[name] for name in EVENTS[key].public}
            for message in messages:
                assert message.id == published["event_id"]
                assert message.json() == public  # exactly the public fields, nothing more
        assert (await tap.captured("user.banned", user_id=author.id))["reason"] == secret_reason  # it was there to leak
        for stream in streams:
            text = bytes(stream.raw).decode()
            assert secret_reason not in text and author.email not in text and "reason" not in text.replace('{"reason":', "")


async def test_an_owners_event_on_the_broker_is_relayed_and_an_outsiders_is_not(
    http: aiohttp.ClientSession, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    refused_before = await event_count(http, "post.created", "wrong_publisher")
    async with live_streams(http, "/live", 2) as streams:
        # The vhost's admin (topic permissions keep the other services off post.*): no owner's user_id.
        forged = post_created()
        await broker.event("post.created", forged)
        started = time.monotonic()
        await broker.event("post.created", (owned := post_created()), as_process="posts")
        messages = await arrived_everywhere(streams, wait_until, "post.created", started, post_id=owned["post_id"])
        assert {m.id for m in messages} == {owned["event_id"]}

        async def parked() -> bool:
            return await event_count(http, "post.created", "wrong_publisher") > refused_before

        await wait_until(parked, timeout=5)  # refused by now: it would have been relayed already
        for stream in streams:
            assert not stream.find("post.created", post_id=forged["post_id"])


async def event_count(http: aiohttp.ClientSession, event: str, outcome: str) -> float:
    async with http.get("/metrics") as response:
        return sample_of(await response.text(), "gateway_events_total", event=event, outcome=outcome)


async def test_a_reconnect_with_last_event_id_gets_what_it_missed_and_an_unknown_id_reloads(
    http: aiohttp.ClientSession, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    # More than a stream's queue holds: a replay is sent whole, never taken for a slow reader.
    events = [post_created() for _ in range(QUEUE_SIZE + 6)]
    async with live_streams(http, "/live", 1) as (watcher,):
        for body in events:
            await broker.event("post.created", body, as_process="posts")

        async def all_seen() -> bool:
            return all(watcher.find("post.created", post_id=e["post_id"]) for e in events)

        await wait_until(all_seen, timeout=2)

    # Back with the id of the first: all the others, in order, as they were sent.
    resumed = await open_stream(http, "/live", last_event_id=events[0]["event_id"])
    try:

        async def replayed() -> bool:
            return all(resumed.find("post.created", post_id=e["post_id"]) for e in events[1:])

        await wait_until(replayed, timeout=2)
        ids = [m.id for m in resumed.messages]
        mine = [e["event_id"] for e in events[1:]]
        assert [i for i in ids if i in mine] == mine
        assert not resumed.find("post.created", post_id=events[0]["post_id"])
        assert not resumed.find("reload")
        # And it goes on live.
        later = post_created()
        started = time.monotonic()
        await broker.event("post.created", later, as_process="posts")
        await arrived_everywhere([resumed], wait_until, "post.created", started, post_id=later["post_id"])
    finally:
        await resumed.close()

    lost = await open_stream(http, "/live", last_event_id=str(uuid4()))
    try:

        async def reloaded() -> bool:
            return bool(lost.messages)

        await wait_until(reloaded, timeout=2)
        first = lost.messages[0]
        assert first.event == "reload" and "reason" in first.json()
        assert first.id is not None  # where to go on from: the newest event this gateway has
    finally:
        await lost.close()


async def test_metrics_count_streams_and_messages(http: aiohttp.ClientSession, stack: Stack) -> None:
    async with live_streams(http, "/live", 2):
        async with http.get("/metrics") as response:
            text = await response.text()
        open_now = float(re.search(r"^gateway_live_streams (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        assert open_now >= 2
        for kind in ("event", "replay", "reload", "heartbeat"):
            assert f'gateway_live_messages_total{{kind="{kind}"}}' in text
        for reason in ("slow_reader", "shutdown"):
            assert f'gateway_live_dropped_total{{reason="{reason}"}}' in text


async def test_a_client_that_leaves_an_idle_stream_frees_its_place_within_seconds(
    http: aiohttp.ClientSession, wait_until: WaitUntil
) -> None:
    """The session's gateway sends a heartbeat every 15 s, so an idle stream's next write is far
    off: the hub's sweep, not a failed write, notices the client has gone (gateway/live.py)."""

    async def streams_open() -> float:
        async with http.get("/metrics") as response:
            return sample_of(await response.text(), "gateway_live_streams")

    async def none_open() -> bool:
        return await streams_open() == 0

    await wait_until(none_open, timeout=5)  # earlier tests' streams, swept within a second
    async with live_streams(http, "/live", 3):
        assert await streams_open() == 3
    left = time.monotonic()
    await wait_until(none_open, timeout=5, interval=0.1)
    assert time.monotonic() - left < 3.0, "the streams were counted as open after their clients left"
