"""The `/live` hub on its own, without a broker: fan-out, the replay window, reloads, the bounds.

The hub is driven as the event feed drives it (`event`, `down`, `up`); streams are opened as the
view opens them, with a stand-in transport that records an abort. What reaches a client over HTTP
is tests/test_live.py's; these pin the rules that decide it.
"""

from __future__ import annotations

import asyncio
from typing import cast
from uuid import uuid4

import pytest

from gateway.event_feed import FeedEvent
from gateway.live import QUEUE_SIZE, WINDOW, LiveHub, Stream, StreamEnded
from gateway.metrics import GatewayMetrics
from shared.errors import ServiceUnavailable

pytestmark = pytest.mark.unit


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False
        self.closed = False  # the client went away

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


def hub(max_streams: int = 10) -> LiveHub:
    return LiveHub(GatewayMetrics(), heartbeat_seconds=0.05, max_streams=max_streams)


def event(key: str = "post.created", **data: str) -> FeedEvent:
    return FeedEvent(key, str(uuid4()), {"post_id": str(uuid4()), **data})


def opened(live: LiveHub, transport: FakeTransport, last_event_id: str | None) -> Stream:
    return live.open_stream(cast(asyncio.BaseTransport, transport), last_event_id)


async def drain(stream: Stream) -> list[bytes]:
    return await stream.take(0.01)


def metric(live: LiveHub, name: str, **labels: str) -> float:
    value = live._metrics.registry.get_sample_value(name, labels or None)  # the hub's own registry
    return value or 0.0


async def test_an_event_is_one_sse_message_on_every_stream() -> None:
    live = hub()
    streams = [opened(live, FakeTransport(), None) for _ in range(3)]
    sent = event(author_id="a")
    live.event(sent)
    for stream in streams:
        (message,) = await drain(stream)
        assert message == f"event: post.created\nid: {sent.event_id}\ndata: {sent.json().decode()}\n\n".encode()
    assert metric(live, "gateway_live_messages_total", kind="event") == 3


async def test_last_event_id_replays_what_came_after_it_in_order() -> None:
    live = hub()
    events = [event() for _ in range(5)]
    for e in events:
        live.event(e)
    stream = opened(live, FakeTransport(), events[1].event_id)
    replayed = await drain(stream)
    assert [m.split(b"\n")[1] for m in replayed] == [f"id: {e.event_id}".encode() for e in events[2:]]
    assert metric(live, "gateway_live_messages_total", kind="replay") == 3


async def test_an_id_older_than_the_window_or_unknown_gets_a_reload_pointing_at_the_newest() -> None:
    live = hub()
    events = [event() for _ in range(WINDOW + 1)]
    for e in events:
        live.event(e)
    for last in (events[0].event_id, "never-sent"):
        (message,) = await drain(opened(live, FakeTransport(), last))
        assert message.startswith(b"event: reload\n")
        assert f"id: {events[-1].event_id}\n".encode() in message


async def test_a_replay_longer_than_the_queue_is_not_taken_for_a_slow_reader() -> None:
    live = hub()
    events = [event() for _ in range(QUEUE_SIZE * 2)]
    for e in events:
        live.event(e)
    transport = FakeTransport()
    stream = opened(live, transport, events[0].event_id)
    live.event(later := event())
    taken = await drain(stream)
    assert not transport.aborted
    assert len(taken) == len(events)  # all the others, and the one that came after
    assert later.event_id.encode() in taken[-1]


async def test_after_a_gap_every_stream_reloads_and_old_ids_no_longer_replay() -> None:
    live = hub()
    before = event()
    live.event(before)
    stream = opened(live, FakeTransport(), None)
    await drain(stream)
    live.down()
    assert await drain(stream) == []  # nothing to say until the feed is back
    live.up()
    (message,) = await drain(stream)
    assert message.startswith(b"event: reload\nid: \n")  # an empty id: the next reconnect starts afresh
    (again,) = await drain(opened(live, FakeTransport(), before.event_id))
    assert again.startswith(b"event: reload\n")


async def test_a_full_queue_drops_its_reader_and_only_it() -> None:
    live = hub()
    slow_transport, quick_transport = FakeTransport(), FakeTransport()
    opened(live, slow_transport, None)
    quick = opened(live, quick_transport, None)
    for _ in range(QUEUE_SIZE):
        live.event(event())
        await drain(quick)
    assert not slow_transport.aborted
    live.event(event())
    assert slow_transport.aborted and not quick_transport.aborted
    assert metric(live, "gateway_live_dropped_total", reason="slow_reader") == 1
    assert metric(live, "gateway_live_streams") == 1
    live.event(event())
    assert len(await drain(quick)) == 2


async def test_the_stream_limit_refuses_with_503_and_retry_after() -> None:
    live = hub(max_streams=2)
    for _ in range(2):
        opened(live, FakeTransport(), None)
    with pytest.raises(ServiceUnavailable) as refused:
        opened(live, FakeTransport(), None)
    assert refused.value.retry_after
    assert metric(live, "gateway_live_refused_total") == 1


async def test_close_ends_every_stream_and_refuses_new_ones() -> None:
    live = hub()
    stream = opened(live, FakeTransport(), None)
    waiting = asyncio.create_task(stream.take(5))
    closing = asyncio.create_task(live.close())
    with pytest.raises(StreamEnded):
        await waiting
    await closing
    with pytest.raises(ServiceUnavailable):
        opened(live, FakeTransport(), None)


async def test_a_departed_client_frees_its_place_at_the_next_sweep_not_its_next_heartbeat() -> None:
    live = hub(max_streams=2)
    staying, leaving = FakeTransport(), FakeTransport()
    kept, left = opened(live, staying, None), opened(live, leaving, None)
    waiting = asyncio.create_task(left.take(60))  # an idle stream: its next write is a minute away
    leaving.closed = True
    live.sweep()
    with pytest.raises(StreamEnded):
        await asyncio.wait_for(waiting, 1)  # its writer returns at once
    assert metric(live, "gateway_live_streams") == 1
    assert metric(live, "gateway_live_dropped_total", reason="slow_reader") == 0  # it left; nobody dropped it
    opened(live, FakeTransport(), None)  # its place is free again
    live.event(event())
    assert len(await drain(kept)) == 1  # the one that stayed goes on
