"""Cached public reads, against the real broker and database: never older than the contract allows.

- A caller reads its own writes. Shown on a "deaf" gateway replica that believes no `post.*` or
  `user.banned` event (it is told their owners are broker users that do not exist, so it parks
  every one): what it answers fresh after its own change, only its own 2xx can have refreshed.
- Two gateways: a change through one, or a command put straight onto the broker, reaches the
  other's answers within one second, from caches both warmed first.
- ETag and `If-None-Match`: 304 for the version held, a new tag for a changed resource.
- The feed cut while the cache is warm: the cache is dropped, and after the link is back the
  gateway serves the version changed meanwhile, never the one it held.

That a cache holds an answer is read from the gateway's `gateway_read_cache_lookups_total` (the
second read of the same thing is a hit), so no test passes for want of a warm cache.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from shared.broker import GATEWAY_EVENTS
from tests.support.accounts import User
from tests.support.broker import BrokerProbe, WaitUntil
from tests.support.faults import BROKER_CUT, FaultWatch
from tests.support.metrics import metric
from tests.support.proxy import CuttableProxy
from tests.support.stack import Stack

#: A change is on every gateway within this long of its commit (the contract's second).
WITHIN = 1.0


# -- helpers ----------------------------------------------------------------------------------


async def hits(url: str, command: str) -> float:
    return await metric(url, "gateway_read_cache_lookups_total", command=command, outcome="hit")


async def wait_live(url: str, wait_until: WaitUntil, *, timeout: float = 15) -> None:
    """Until the replica's feed is up and its cache may keep answers."""

    async def live() -> bool:
        return await metric(url, "gateway_read_cache_live") == 1

    await wait_until(live, timeout=timeout, interval=0.1)


async def read(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(url, headers=headers) as response:
        body = await response.read()
        return response.status, (await response.json() if body and response.status != 304 else None), response.headers


async def warm(http: aiohttp.ClientSession, gateway: str, path: str, command: str) -> Any:
    """Read `path` from `gateway` until a second read is a hit (an event of an earlier change
    may still drop the first). Returns what its cache holds."""
    deadline = time.monotonic() + 5
    while True:
        status, first, _ = await read(http, gateway + path)
        assert status == 200, first
        before = await hits(gateway, command)
        status, second, _ = await read(http, gateway + path)
        if status == 200 and second == first and await hits(gateway, command) == before + 1:
            return second
        assert time.monotonic() < deadline, f"{path} was not answered from {gateway}'s cache"
        await asyncio.sleep(0.05)


async def create_post(http: aiohttp.ClientSession, gateway: str, author: User, title: str = "first") -> dict[str, Any]:
    async with http.post(gateway + "/posts", json={"title": title, "body": "b"}, headers=author.auth) as response:
        assert response.status == 201, await response.text()
        return dict(await response.json())


async def profile_ready(http: aiohttp.ClientSession, gateway: str, user: User, wait_until: WaitUntil) -> None:
    """A profile appears when users_service has heard `user.registered` (not cached while 404)."""

    async def found() -> bool:
        return (await read(http, f"{gateway}/users/{user.id}"))[0] == 200

    await wait_until(found, timeout=5)


def page_ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


async def within_a_second(check: Any, wait_until: WaitUntil, since: float, what: str) -> None:
    """Poll `check` until true; it must be true within WITHIN of `since` (the change's answer)."""
    await wait_until(check, timeout=WITHIN + 2, interval=0.02)
    took = time.monotonic() - since
    assert took <= WITHIN, f"{what} took {took:.2f} s to show"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def gateway_a(stack: Stack, wait_until: WaitUntil) -> str:
    """The session's gateway."""
    await wait_live(stack.gateway_url, wait_until)
    return stack.gateway_url


@pytest.fixture(scope="module")
async def gateway_b(stack: Stack, wait_until: WaitUntil) -> AsyncIterator[str]:
    """A second replica on the same broker and database."""
    url = await stack.start_gateway("gateway-b")
    await wait_live(url, wait_until)
    yield url
    await asyncio.to_thread(stack.stop, "gateway-b")


@pytest.fixture(scope="module")
async def deaf_gateway(stack: Stack, broker: BrokerProbe, wait_until: WaitUntil) -> AsyncIterator[str]:
    """A replica that believes no public event: only its own writes can refresh its cache."""
    url = await stack.start_gateway("gateway-deaf", {"BROKER_USER_POSTS": "nobody-posts", "BROKER_USER_USERS": "nobody-users"})
    await wait_live(url, wait_until)
    yield url
    await asyncio.to_thread(stack.stop, "gateway-deaf")
    await broker.dead_letters(GATEWAY_EVENTS)  # what it parked while it ran


# -- ETag and 304 -----------------------------------------------------------------------------


async def test_public_reads_carry_an_etag_and_answer_304_for_the_version_held(
    client: aiohttp.ClientSession, gateway_a: str, new_user, wait_until: WaitUntil
) -> None:
    author: User = await new_user("etag")
    post = await create_post(client, gateway_a, author)
    await profile_ready(client, gateway_a, author, wait_until)
    for path in (f"/posts/{post['id']}", "/posts?limit=3", f"/users/{author.id}"):
        status, _, headers = await read(client, gateway_a + path)
        assert status == 200, path
        etag = headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"'), f"{path}: a strong ETag, got {etag}"
        assert headers["Cache-Control"] == "no-cache", "kept by browsers and proxies only to be revalidated"
        for offered in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            status, body, again = await read(client, gateway_a + path, **{"If-None-Match": offered})
            assert status == 304 and body is None, (path, offered)
            assert again["ETag"] == etag and again["Cache-Control"] == "no-cache"
        status, _, _ = await read(client, gateway_a + path, **{"If-None-Match": '"not-this-one"'})
        assert status == 200

    # A later page is not kept but is tagged all the same.
    status, first_page, _ = await read(client, gateway_a + "/posts?limit=1")
    if first_page["next_cursor"]:
        status, _, headers = await read(client, f"{gateway_a}/posts?limit=1&cursor={first_page['next_cursor']}")
        assert status == 200 and headers["ETag"]
    status, _, headers = await read(client, f"{gateway_a}/posts/00000000-0000-4000-8000-000000000000")
    assert status == 404 and "ETag" not in headers


async def test_a_changed_post_gets_a_new_etag(client: aiohttp.ClientSession, gateway_a: str, new_user) -> None:
    author: User = await new_user("etag-change")
    post = await create_post(client, gateway_a, author)
    path = f"{gateway_a}/posts/{post['id']}"
    await warm(client, gateway_a, f"/posts/{post['id']}", "get-post")
    _, _, headers = await read(client, path)
    old = headers["ETag"]
    async with client.patch(path, json={"title": "second"}, headers=author.auth) as response:
        assert response.status == 200
    status, body, headers = await read(client, path, **{"If-None-Match": old})
    assert status == 200 and body["title"] == "second", "the held version is no longer current: the whole answer"
    assert headers["ETag"] != old


# -- read-your-writes -------------------------------------------------------------------------


async def test_the_deaf_gateway_hears_no_change_but_its_own(
    client: aiohttp.ClientSession, gateway_a: str, deaf_gateway: str, new_user, wait_until: WaitUntil
) -> None:
    """The premise of the tests below: a change made elsewhere stays unseen on the deaf replica
    (its cache would serve the old version), so only its own writes can have refreshed it."""
    author: User = await new_user("deaf")
    post = await create_post(client, gateway_a, author)
    await warm(client, deaf_gateway, f"/posts/{post['id']}", "get-post")
    refused = await metric(deaf_gateway, "gateway_events_total", event="post.edited", outcome="wrong_publisher")
    async with client.patch(f"{gateway_a}/posts/{post['id']}", json={"title": "elsewhere"}, headers=author.auth) as response:
        assert response.status == 200

    async def heard_and_refused() -> bool:
        return await metric(deaf_gateway, "gateway_events_total", event="post.edited", outcome="wrong_publisher") > refused

    await wait_until(heard_and_refused, timeout=5)
    _, body, _ = await read(client, f"{deaf_gateway}/posts/{post['id']}")
    assert body["title"] == "first", "the deaf replica was expected to hold the old version"


async def test_an_edit_is_read_back_at_once(client: aiohttp.ClientSession, deaf_gateway: str, new_user) -> None:
    author: User = await new_user("ryw-edit")
    post = await create_post(client, deaf_gateway, author)
    path = f"/posts/{post['id']}"
    await warm(client, deaf_gateway, path, "get-post")
    page = await warm(client, deaf_gateway, "/posts?limit=100", "list-posts")
    assert post["id"] in page_ids(page)
    async with client.patch(deaf_gateway + path, json={"title": "edited"}, headers=author.auth) as response:
        assert response.status == 200
    _, body, _ = await read(client, deaf_gateway + path)
    assert body["title"] == "edited"
    _, page, _ = await read(client, deaf_gateway + "/posts?limit=100")
    assert next(item for item in page["items"] if item["id"] == post["id"])["title"] == "edited"


async def test_a_delete_is_read_back_at_once(client: aiohttp.ClientSession, deaf_gateway: str, new_user) -> None:
    author: User = await new_user("ryw-delete")
    post = await create_post(client, deaf_gateway, author)
    path = f"/posts/{post['id']}"
    await warm(client, deaf_gateway, path, "get-post")
    await warm(client, deaf_gateway, "/posts?limit=100", "list-posts")
    async with client.delete(deaf_gateway + path, headers=author.auth) as response:
        assert response.status == 204
    status, _, _ = await read(client, deaf_gateway + path)
    assert status == 404
    _, page, _ = await read(client, deaf_gateway + "/posts?limit=100")
    assert post["id"] not in page_ids(page)


async def test_a_new_post_is_on_the_first_page_at_once(client: aiohttp.ClientSession, deaf_gateway: str, new_user) -> None:
    author: User = await new_user("ryw-create")
    for limit in (1, 20):
        await warm(client, deaf_gateway, f"/posts?limit={limit}", "list-posts")
    await warm(client, deaf_gateway, "/posts", "list-posts")
    post = await create_post(client, deaf_gateway, author, "brand new")
    for path in ("/posts?limit=1", "/posts?limit=20", "/posts"):
        _, page, _ = await read(client, deaf_gateway + path)
        assert page_ids(page)[0] == post["id"], path


async def test_a_ban_is_read_back_at_once(
    client: aiohttp.ClientSession, deaf_gateway: str, admin: User, new_user, wait_until: WaitUntil
) -> None:
    target: User = await new_user("ryw-ban")
    await profile_ready(client, deaf_gateway, target, wait_until)
    profile = await warm(client, deaf_gateway, f"/users/{target.id}", "get-user")
    assert profile["banned"] is False
    async with client.post(f"{deaf_gateway}/users/{target.id}/ban", json={"reason": "spam"}, headers=admin.auth) as response:
        assert response.status == 200, await response.text()
    _, profile, _ = await read(client, f"{deaf_gateway}/users/{target.id}")
    assert profile["banned"] is True


# -- two gateways, and the broker -------------------------------------------------------------


async def test_a_change_through_one_gateway_reaches_the_other_within_a_second(
    client: aiohttp.ClientSession, gateway_a: str, gateway_b: str, admin: User, new_user, wait_until: WaitUntil
) -> None:
    author: User = await new_user("two-gateways")
    post = await create_post(client, gateway_a, author)
    await profile_ready(client, gateway_a, author, wait_until)
    post_path, user_path, page_path = f"/posts/{post['id']}", f"/users/{author.id}", "/posts?limit=5"
    for gateway in (gateway_a, gateway_b):
        await warm(client, gateway, post_path, "get-post")
        await warm(client, gateway, page_path, "list-posts")
        await warm(client, gateway, user_path, "get-user")

    async def b_shows(path: str, check: Any) -> Any:
        async def shown() -> bool:
            status, body, _ = await read(client, gateway_b + path)
            return bool(check(status, body))

        return shown

    # edit
    async with client.patch(gateway_a + post_path, json={"title": "via A"}, headers=author.auth) as response:
        assert response.status == 200
    changed = time.monotonic()
    assert (await read(client, gateway_a + post_path))[1]["title"] == "via A", "A reads its own write"
    await within_a_second(await b_shows(post_path, lambda s, b: b["title"] == "via A"), wait_until, changed, "an edit on B")
    await within_a_second(
        await b_shows(page_path, lambda s, b: any(i["title"] == "via A" for i in b["items"])), wait_until, changed, "an edit on B's page"
    )

    # create: B's first page warm again, then a new post through A
    await warm(client, gateway_b, page_path, "list-posts")
    newer = await create_post(client, gateway_a, author, "newer")
    changed = time.monotonic()
    await within_a_second(await b_shows(page_path, lambda s, b: page_ids(b)[0] == newer["id"]), wait_until, changed, "a new post on B")

    # delete
    await warm(client, gateway_b, post_path, "get-post")
    async with client.delete(gateway_a + post_path, headers=author.auth) as response:
        assert response.status == 204
    changed = time.monotonic()
    assert (await read(client, gateway_a + post_path))[0] == 404
    await within_a_second(await b_shows(post_path, lambda s, b: s == 404), wait_until, changed, "a delete on B")

    # ban
    async with client.post(f"{gateway_a}/users/{author.id}/ban", json={}, headers=admin.auth) as response:
        assert response.status == 200
    changed = time.monotonic()
    await within_a_second(await b_shows(user_path, lambda s, b: b["banned"] is True), wait_until, changed, "a ban on B")


async def test_a_command_put_straight_onto_the_broker_reaches_every_gateway_within_a_second(
    client: aiohttp.ClientSession, gateway_a: str, gateway_b: str, broker: BrokerProbe, new_user, wait_until: WaitUntil
) -> None:
    author: User = await new_user("straight")
    post = await create_post(client, gateway_a, author)
    path = f"/posts/{post['id']}"
    for gateway in (gateway_a, gateway_b):
        await warm(client, gateway, path, "get-post")
    reply = await broker.command("edit-post", {"post_id": post["id"], "title": "by the broker"}, token=author.token, as_process="gateway")
    assert reply is not None and reply["ok"], reply
    changed = time.monotonic()
    for gateway in (gateway_a, gateway_b):

        async def shown(gateway: str = gateway) -> bool:
            return (await read(client, gateway + path))[1]["title"] == "by the broker"

        await within_a_second(shown, wait_until, changed, f"an edit by the broker on {gateway}")


# -- the feed cut while the cache is warm -----------------------------------------------------


def through(proxy: CuttableProxy, amqp_url: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@asynccontextmanager
async def gateway_behind_proxy(stack: Stack, name: str, rpc_timeout: str) -> AsyncIterator[tuple[str, CuttableProxy]]:
    """Another gateway of the stack whose broker links go through a proxy the test can cut or
    freeze: its URL and the proxy. Stopped, and the proxy closed, after the block."""
    upstream = urllib.parse.urlsplit(stack.env["AMQP_URL"])
    proxy = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 5672)
    await proxy.start()
    try:
        url = await stack.start_gateway(
            name, {"AMQP_URL": through(proxy, stack.env_for("gateway")["AMQP_URL"]), "RPC_TIMEOUT_SECONDS": rpc_timeout}
        )
        yield url, proxy
    finally:
        proxy.thaw()
        await asyncio.to_thread(stack.stop, name)
        await proxy.cut()


@pytest.mark.fault
async def test_a_gateway_cut_off_the_broker_drops_its_cache_and_serves_no_stale_answer_after(
    stack: Stack, client: aiohttp.ClientSession, gateway_a: str, new_user, wait_until: WaitUntil, faults: FaultWatch
) -> None:
    faults.expect(*BROKER_CUT)
    async with gateway_behind_proxy(stack, "gateway-cut", "5") as (cut, proxy):
        await wait_live(cut, wait_until)
        author: User = await new_user("cut")
        post = await create_post(client, gateway_a, author)
        path = f"/posts/{post['id']}"
        await warm(client, cut, path, "get-post")
        assert await metric(cut, "gateway_read_cache_entries") >= 1
        dropped = await metric(cut, "gateway_read_cache_invalidations_total", reason="feed_down")
        gaps = await metric(cut, "gateway_read_cache_invalidations_total", reason="gap")

        await proxy.cut()

        async def dropped_everything() -> bool:
            return (
                await metric(cut, "gateway_read_cache_invalidations_total", reason="feed_down") == dropped + 1
                and await metric(cut, "gateway_read_cache_live") == 0
                and await metric(cut, "gateway_read_cache_entries") == 0
                and (await read(client, cut + "/readyz"))[0] == 503  # its command link is down too
            )

        await wait_until(dropped_everything, timeout=5)
        async with aiohttp.ClientSession(trace_configs=[faults.trace_config()]) as traced:
            status, _, _ = await read(traced, cut + path)
            assert status == 503, "cut off the broker, it can neither read through nor trust what it held"

            # The post changes while the gateway cannot hear of it.
            async with client.patch(gateway_a + path, json={"title": "while cut"}, headers=author.auth) as response:
                assert response.status == 200
            await proxy.restore()

            async def fresh() -> bool:
                status, body, _ = await read(traced, cut + path)
                assert status != 200 or body["title"] == "while cut", "a stale answer after the link came back"
                return status == 200

            await wait_until(fresh, timeout=20, interval=0.1)
        await wait_live(cut, wait_until, timeout=20)
        assert await metric(cut, "gateway_read_cache_invalidations_total", reason="gap") == gaps + 1
        assert (await warm(client, cut, path, "get-post"))["title"] == "while cut", "kept again once the feed is back"


@pytest.mark.fault
async def test_a_silent_partition_from_the_broker_drops_the_cache_within_a_second(
    stack: Stack, client: aiohttp.ClientSession, gateway_a: str, new_user, wait_until: WaitUntil, faults: FaultWatch
) -> None:
    """Packets that just stop (no FIN, no RST) are noticed by the feed's own probe, not at the AMQP
    heartbeat a minute later: within a second the cache stops serving what it can no longer trust."""
    faults.expect(*BROKER_CUT)
    async with gateway_behind_proxy(stack, "gateway-frozen", "3") as (frozen, proxy):
        await wait_live(frozen, wait_until)
        author: User = await new_user("frozen")
        post = await create_post(client, gateway_a, author)
        path = f"/posts/{post['id']}"
        await warm(client, frozen, path, "get-post")
        dropped = await metric(frozen, "gateway_read_cache_invalidations_total", reason="feed_down")

        proxy.freeze()
        frozen_at = time.monotonic()

        async def dropped_everything() -> bool:
            return await metric(frozen, "gateway_read_cache_live") == 0 and await metric(frozen, "gateway_read_cache_entries") == 0

        await wait_until(dropped_everything, timeout=5, interval=0.05)
        noticed = time.monotonic() - frozen_at
        assert noticed < 1.5, f"a silent partition went unnoticed for {noticed:.2f} s"
        assert await metric(frozen, "gateway_read_cache_invalidations_total", reason="feed_down") == dropped + 1

        async with client.patch(gateway_a + path, json={"title": "during the partition"}, headers=author.auth) as response:
            assert response.status == 200
        proxy.thaw()

        async def fresh() -> bool:
            status, body, _ = await read(client, frozen + path)
            assert status != 200 or body["title"] == "during the partition", "a stale answer after the partition"
            return status == 200

        await wait_until(fresh, timeout=30, interval=0.2)
