"""The gateway's feed of public events: what the read side (`GET /live`, the cache) believes.

It runs on the gateway's least-privilege broker user (tests/support/broker_users.py gives every
process the grant of shared.topology.grants), so these tests also show that grant is enough to
declare, bind and consume the replica's own queue. An event is believed only from its owner:
an outsider's, a service's under a key it does not own, or a malformed body is parked in
`gateway.events.dead` and counted, never relayed. Outcomes are read from the gateway's
`gateway_events_total`, so nothing here races the consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import aiohttp
import pytest

from shared.broker import GATEWAY_EVENTS
from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.metrics import sample_of
from tests.support.stack import Stack


async def event_count(http: aiohttp.ClientSession, stack: Stack, event: str, outcome: str) -> float:
    async with http.get(stack.gateway_url + "/metrics") as response:
        return sample_of(await response.text(), "gateway_events_total", event=event, outcome=outcome)


def post_created() -> dict[str, str]:
    return {"event_id": str(uuid4()), "occurred_at": datetime.now(UTC).isoformat(), "post_id": str(uuid4()), "author_id": str(uuid4())}


@pytest.mark.parametrize(
    ("as_process", "outcome"),
    [("posts", "ok"), (None, "wrong_publisher")],
    ids=["owner", "outsider"],
)
async def test_an_event_is_believed_only_from_its_owner(
    http: aiohttp.ClientSession, stack: Stack, broker: BrokerProbe, wait_until: WaitUntil, as_process: str | None, outcome: str
) -> None:
    before = await event_count(http, stack, "post.created", outcome)
    body = post_created()
    # The outsider is the admin URL (topic permissions keep the other services off post.*).
    await broker.event("post.created", body, as_process=as_process)

    async def counted() -> bool:
        return await event_count(http, stack, "post.created", outcome) == before + 1

    await wait_until(counted, timeout=5)
    if outcome != "ok":
        parked = await broker.parked(GATEWAY_EVENTS, lambda m: body["event_id"].encode() in m.body)
        death: Any = parked.headers["x-death"]
        assert death[0]["reason"] == "rejected" and death[0]["routing-keys"] == ["post.created"]


async def test_a_malformed_public_event_is_parked(
    http: aiohttp.ClientSession, stack: Stack, broker: BrokerProbe, wait_until: WaitUntil
) -> None:
    before = await event_count(http, stack, "post.deleted", "malformed")
    marker = str(uuid4())
    await broker.event("post.deleted", {"event_id": marker, "post_id": "not-a-uuid"}, as_process="posts")

    async def counted() -> bool:
        return await event_count(http, stack, "post.deleted", "malformed") == before + 1

    await wait_until(counted, timeout=5)
    await broker.parked(GATEWAY_EVENTS, lambda m: marker.encode() in m.body)
