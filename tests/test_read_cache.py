"""The read cache on its own (no services): its bounds, what each change makes stale, the feed
going down, the race between a miss and an invalidation, and conditional GETs."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway import views
from gateway.conditional import Representation, etag_of, none_match
from gateway.event_feed import FeedEvent
from gateway.keys import READ_CACHE
from gateway.metrics import GatewayMetrics
from gateway.read_cache import CACHED_READS, STALE_AFTER, Key, ReadCache, read_key
from shared.commands import COMMANDS
from shared.events import EVENTS, public_events

pytestmark = pytest.mark.unit


def live_cache(max_entries: int = 100, max_bytes: int = 1_000_000) -> ReadCache:
    cache = ReadCache(max_entries=max_entries, max_bytes=max_bytes, metrics=GatewayMetrics())
    cache.up()
    return cache


def keep(cache: ReadCache, key: Key, body: bytes = b"{}") -> None:
    cache.fill(cache.begin(key), body)


def post(post_id: str | None = None) -> Key:
    return ("get-post", post_id or str(uuid4()))


def user(user_id: str | None = None) -> Key:
    return ("get-user", user_id or str(uuid4()))


def page(limit: int = 20) -> Key:
    return ("list-posts", str(limit))


def feed_event(key: str, **data: str) -> FeedEvent:
    return FeedEvent(key, str(uuid4()), data)


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- keys and bounds --------------------------------------------------------------------------


def test_only_first_pages_are_kept_and_the_default_limit_is_one_page() -> None:
    assert read_key("list-posts", {}) == read_key("list-posts", {"limit": 20}) == ("list-posts", "20")
    assert read_key("list-posts", {"limit": 20, "cursor": "abc"}) is None
    post_id = str(uuid4())
    assert read_key("get-post", {"post_id": post_id}) == ("get-post", post_id)


def test_every_public_read_over_http_is_cached_and_nothing_else() -> None:
    """Only PUBLIC commands' answers may be kept: they do not depend on who asks."""
    public_reads = {c.name for c in COMMANDS.values() if c.public_read and c.http is not None}
    assert set(CACHED_READS) == public_reads
    assert not any(COMMANDS[name].guarded for name in CACHED_READS)


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = live_cache(max_entries=3)
    first, second, third, fourth = post(), post(), post(), post()
    for key in (first, second, third):
        keep(cache, key)
    assert cache.get(first) is not None  # now the most recent
    keep(cache, fourth)
    assert len(cache) == 3
    assert cache.get(second) is None
    assert all(cache.get(key) is not None for key in (first, third, fourth))
    assert sample(cache._metrics, "gateway_read_cache_evictions_total") == 1


def test_the_bytes_are_bounded_too() -> None:
    cache = live_cache(max_bytes=100)
    older, newer, huge = post(), post(), post()
    keep(cache, older, b"x" * 60)
    keep(cache, newer, b"y" * 60)
    assert cache.get(older) is None and cache.get(newer) is not None
    assert cache.size_bytes == 60
    keep(cache, huge, b"z" * 101)  # larger than the whole cache: answered, never kept
    assert cache.get(huge) is None and cache.get(newer) is not None


def test_nothing_is_kept_when_the_cache_is_off() -> None:
    cache = live_cache(max_entries=0)
    key = post()
    answer = cache.fill(cache.begin(key), b'{"a":1}')
    assert answer.body == b'{"a":1}'
    assert cache.get(key) is None


# -- what each change makes stale -------------------------------------------------------------


def test_every_public_event_says_what_it_makes_stale() -> None:
    assert set(STALE_AFTER) == set(public_events())
    for event, rules in STALE_AFTER.items():
        for rule in rules:
            assert rule.command in CACHED_READS
            assert rule.field is None or rule.field in EVENTS[event].public, (event, rule)


def test_every_write_that_emits_a_public_event_names_what_it_changes() -> None:
    """A gateway drops what its own 2xx makes stale from the payload alone: the fields its events'
    rules need must be payload fields."""
    for command in COMMANDS.values():
        for event in command.emits:
            for rule in STALE_AFTER.get(event, ()):
                assert rule.field is None or rule.field in command.payload.model_fields, (command.name, event, rule)


@pytest.fixture
def warm() -> tuple[ReadCache, dict[str, Key]]:
    cache = live_cache()
    keys = {"post": post(), "other_post": post(), "page": page(), "page_5": page(5), "user": user(), "other_user": user()}
    for key in keys.values():
        keep(cache, key)
    return cache, keys


@pytest.mark.parametrize(
    ("event", "fields", "dropped"),
    [
        ("post.created", {"post_id": "new", "author_id": "user"}, {"page", "page_5"}),
        ("post.edited", {"post_id": "post", "by": "user"}, {"post", "page", "page_5"}),
        ("post.deleted", {"post_id": "post", "by": "user"}, {"post", "page", "page_5"}),
        # A post shows its author's id only: a ban changes the profile, no post and no page.
        ("user.banned", {"user_id": "user", "by": "other_user"}, {"user"}),
    ],
)
def test_an_event_drops_what_it_makes_stale_and_nothing_else(
    warm: tuple[ReadCache, dict[str, Key]], event: str, fields: dict[str, str], dropped: set[str]
) -> None:
    cache, keys = warm
    data = {name: keys[value][1] if value in keys else str(uuid4()) for name, value in fields.items()}
    cache.event(feed_event(event, **data))
    assert {name for name, key in keys.items() if cache.get(key) is None} == dropped
    assert sample(cache._metrics, "gateway_read_cache_invalidations_total", reason="event") == 1


@pytest.mark.parametrize(
    ("command", "payload", "dropped"),
    [
        ("create-post", {"title": "t", "body": "b"}, {"page", "page_5"}),
        ("edit-post", {"post_id": "post", "title": "t"}, {"post", "page", "page_5"}),
        ("delete-post", {"post_id": "post"}, {"post", "page", "page_5"}),
        ("ban-user", {"user_id": "user"}, {"user"}),
        ("logout", {}, set()),
    ],
)
def test_an_own_write_drops_what_its_events_will(
    warm: tuple[ReadCache, dict[str, Key]], command: str, payload: dict[str, str], dropped: set[str]
) -> None:
    cache, keys = warm
    resolved = {name: keys[value][1] if value in keys else value for name, value in payload.items()}
    cache.after_write(COMMANDS[command], resolved)
    assert {name for name, key in keys.items() if cache.get(key) is None} == dropped
    expected = 1 if dropped else 0
    assert sample(cache._metrics, "gateway_read_cache_invalidations_total", reason="own_write") == expected


def test_nothing_is_served_or_kept_while_the_feed_is_down_and_it_starts_empty(warm: tuple[ReadCache, dict[str, Key]]) -> None:
    cache, keys = warm
    cache.down()
    assert len(cache) == 0 and cache.size_bytes == 0
    assert all(cache.get(key) is None for key in keys.values())
    keep(cache, keys["post"])
    assert cache.get(keys["post"]) is None
    cache.up()
    assert len(cache) == 0
    keep(cache, keys["post"])
    assert cache.get(keys["post"]) is not None
    metrics = cache._metrics
    assert sample(metrics, "gateway_read_cache_invalidations_total", reason="feed_down") == 1
    assert sample(metrics, "gateway_read_cache_invalidations_total", reason="gap") == 1
    assert sample(metrics, "gateway_read_cache_lookups_total", command="get-post", outcome="bypass") == 1


def test_a_cache_keeps_nothing_before_its_feed_is_first_up() -> None:
    cache = ReadCache(max_entries=10, max_bytes=1000, metrics=GatewayMetrics())
    key = post()
    keep(cache, key)
    assert cache.get(key) is None


# -- the fill race ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda cache, key: cache.event(feed_event("post.edited", post_id=key[1], by=str(uuid4()))),
        lambda cache, key: cache.after_write(COMMANDS["delete-post"], {"post_id": key[1]}),
        lambda cache, key: (cache.down(), cache.up()),
    ],
    ids=["event", "own-write", "feed-gap"],
)
async def test_a_miss_read_before_a_change_is_not_kept_after_it(change) -> None:
    """The miss reads the old version, the change is heard while its reply is on the way back:
    its caller gets what it read, but the cache must not keep it."""
    cache = live_cache()
    key = post()
    bus: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def miss() -> Representation:
        fill = cache.begin(key)
        body = await bus  # the read went through the bus before the change committed
        return cache.fill(fill, body)

    reading = asyncio.create_task(miss())
    await asyncio.sleep(0)  # the miss has begun
    change(cache, key)
    bus.set_result(b'{"title":"old"}')
    assert (await reading).body == b'{"title":"old"}'
    assert cache.get(key) is None, "an answer read before the change outlived it in the cache"
    keep(cache, key, b'{"title":"new"}')  # a miss begun after the change is kept
    kept = cache.get(key)
    assert kept is not None and kept.body == b'{"title":"new"}'


async def test_a_change_to_something_else_does_not_spoil_a_miss() -> None:
    cache = live_cache()
    key = post()
    fill = cache.begin(key)
    cache.event(feed_event("post.edited", post_id=str(uuid4()), by=str(uuid4())))
    cache.event(feed_event("user.banned", user_id=str(uuid4()), by=str(uuid4())))
    cache.fill(fill, b"{}")
    assert cache.get(key) is not None


def test_a_change_to_every_page_spoils_a_page_in_flight() -> None:
    cache = live_cache()
    fill = cache.begin(page(7))
    cache.event(feed_event("post.created", post_id=str(uuid4()), author_id=str(uuid4())))
    cache.fill(fill, b"{}")
    assert cache.get(page(7)) is None
    assert sample(cache._metrics, "gateway_read_cache_stale_fills_total") == 1


# -- conditional GETs -------------------------------------------------------------------------


def test_etags_are_strong_and_follow_the_body() -> None:
    tag = etag_of(b'{"a":1}')
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert etag_of(b'{"a":1}') == tag != etag_of(b'{"a":2}')


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("{tag}", True),
        ("W/{tag}", True),  # If-None-Match compares weakly (RFC 9110 §13.1.2)
        ('"other", {tag}', True),
        ('"other",W/{tag} ', True),
        ("*", True),
        ('"other"', False),
        ('"x, {tag}', False),  # the quote opens another tag: ours is not in the list
        ("{bare}", False),  # an unquoted tag is not an entity-tag
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    tag = etag_of(b"{}")
    value = None if header is None else header.format(tag=tag, bare=tag.strip('"'))
    assert none_match(value, tag) is matches


def test_a_304_has_the_validators_and_no_body() -> None:
    answer = Representation.of(b'{"a":1}')
    fresh = answer.answer(make_mocked_request("GET", "/posts"))
    assert fresh.status == 200 and fresh.body == b'{"a":1}'
    assert fresh.headers["ETag"] == answer.etag and fresh.headers["Cache-Control"] == "no-cache"
    assert fresh.content_type == "application/json"
    same = answer.answer(make_mocked_request("GET", "/posts", headers={"If-None-Match": answer.etag}))
    assert same.status == 304 and not same.body
    assert same.headers["ETag"] == answer.etag and same.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    ("command", "path", "field", "key"),
    [
        ("get-post", "/posts/{id}", "post_id", ("get-post", "{id}")),
        ("get-user", "/users/{id}", "user_id", ("get-user", "{id}")),
        ("list-posts", "/posts?limit=5", None, ("list-posts", "5")),
        ("list-posts", "/posts", None, ("list-posts", "20")),
    ],
)
async def test_a_hit_is_answered_from_the_bytes_kept_with_no_json_work(
    monkeypatch: pytest.MonkeyPatch, command: str, path: str, field: str | None, key: tuple[str, str]
) -> None:
    """The view finds the entry its fill kept (the same key from the request as from the
    payload) and sends the kept bytes: nothing is serialized and nothing is sent on the bus."""
    resource_id = str(uuid4())
    app = web.Application()
    app[READ_CACHE] = cache = live_cache()
    keep(cache, (key[0], key[1].format(id=resource_id)), b'{"kept":true}')

    def no_json(*_: object) -> bytes:
        raise AssertionError("a hit serialized JSON")

    async def no_bus(*_: object, **__: object) -> object:
        raise AssertionError("a hit went to the bus")

    monkeypatch.setattr(views.jsoncodec, "dumps", no_json)
    monkeypatch.setattr(views, "send", no_bus)
    match_info = {field: resource_id} if field else {}
    request = make_mocked_request("GET", path.format(id=resource_id), app=app, match_info=match_info)
    response = await views.public_read_view(COMMANDS[command])(request)
    assert isinstance(response, web.Response)
    assert response.status == 200 and response.body == b'{"kept":true}'
