"""What /metrics shows, scraped after real traffic: on the gateway and on every service, requests
and commands by name and outcome, latency histograms, authorization decisions, dead-letter queue
depth and the outbox backlog (pending events and the age of the oldest)."""

from __future__ import annotations

from uuid import uuid4

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.support.stack import Stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> tuple[set[str], Samples]:
    """The metric families a /metrics page declares, and every sample by name and labels."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_the_gateway_and_every_service_count_what_they_did(stack: Stack, http: aiohttp.ClientSession, new_user) -> None:
    author: User = await new_user("counted")
    intruder: User = await new_user("counted-intruder")
    async with http.post("/posts", json={"title": "t", "body": "b"}, headers=author.auth) as response:
        post_id = (await response.json())["id"]
    async with http.delete(f"/posts/{post_id}", headers=intruder.auth) as response:
        assert response.status == 403

    names, samples = await scrape(stack.gateway_url)
    assert {"http_requests", "http_request_duration_seconds", "gateway_commands"} <= names
    assert value(samples, "http_requests_total", route="/posts/{post_id}", method="DELETE", status="403")
    assert value(samples, "http_request_duration_seconds_count", route="/posts/{post_id}", method="DELETE")
    assert value(samples, "gateway_commands_total", command="delete-post", outcome="403")
    assert value(samples, "gateway_commands_total", command="create-post", outcome="ok")

    for service in ("auth", "users", "posts"):
        names, samples = await scrape(stack.http_url(service))
        assert {
            "commands",
            "command_duration_seconds",
            "authorization_decisions",
            "events_consumed",
            "dead_lettered",
            "dead_letter_queue_depth",
            "outbox_pending_events",
            "outbox_oldest_event_age_seconds",
        } <= names, service
    _, samples = await scrape(stack.http_url("posts"))
    assert value(samples, "commands_total", command="delete-post", outcome="403")
    assert value(samples, "commands_total", command="create-post", outcome="ok")
    assert value(samples, "command_duration_seconds_count", command="delete-post")
    assert value(samples, "authorization_decisions_total", command="delete-post", decision="denied")
    assert value(samples, "authorization_decisions_total", command="create-post", decision="allowed")
    _, samples = await scrape(stack.http_url("auth"))
    assert value(samples, "commands_total", command="login", outcome="ok")


async def test_dead_letter_queue_depth_follows_a_parked_message(stack: Stack, broker: BrokerProbe, wait_until) -> None:
    queue = "posts.commands.dead"

    async def depth() -> float | None:
        return value((await scrape(stack.http_url("posts")))[1], "dead_letter_queue_depth", queue=queue)

    async def depth_is(expected: float) -> bool:
        return await depth() == expected

    await broker.dead_letters("posts.commands")  # start from an empty queue
    await wait_until(lambda: depth_is(0), timeout=15, interval=0.5)
    reply = await broker.command("create-post", body=b"not json")
    assert reply is not None and reply["error"]["status"] == 400
    await wait_until(lambda: depth_is(1), timeout=15, interval=0.5)
    await broker.dead_letters("posts.commands")
    await wait_until(lambda: depth_is(0), timeout=15, interval=0.5)


async def test_outbox_lag_is_the_age_of_the_oldest_unrelayed_event(stack: Stack, db: asyncpg.Pool, wait_until) -> None:
    async def gauges() -> tuple[float | None, float | None]:
        _, samples = await scrape(stack.http_url("posts"))
        return value(samples, "outbox_pending_events"), value(samples, "outbox_oldest_event_age_seconds")

    # An event the relay cannot take: committed a minute ago, and locked by this test (the relay
    # skips locked rows) as soon as it is visible. The relay may win the race; then try again.
    async with db.acquire() as conn:
        for _ in range(5):
            event_id = uuid4()
            await conn.execute(
                "INSERT INTO posts.outbox (event_id, routing_key, body, created_at)"
                " VALUES ($1, 'test.outbox-lag', '{}'::jsonb, now() - interval '1 minute')",
                event_id,
            )
            transaction = conn.transaction()
            await transaction.start()
            if await conn.fetchval("SELECT true FROM posts.outbox WHERE event_id = $1 FOR UPDATE", event_id):
                break
            await transaction.rollback()
        else:
            raise AssertionError("the relay took every test event before it could be locked")
        try:

            async def lagging() -> bool:
                pending, age = await gauges()
                return bool(pending and pending >= 1 and age is not None and age >= 60)

            await wait_until(lagging, timeout=15, interval=0.5)
            await conn.execute("DELETE FROM posts.outbox WHERE event_id = $1", event_id)
        finally:
            await transaction.commit()

    async def caught_up() -> bool:
        pending, age = await gauges()
        return pending == 0 and age == 0

    await wait_until(caught_up, timeout=15, interval=0.5)
