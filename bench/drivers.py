"""How each case is driven: what to prepare (unmeasured) and the load run that is measured.

`prepare` does the unmeasured part (fresh tokens, a warm-up, enough posts to delete) and returns
the measured run: a coroutine giving the load figures and the load generator's own CPU seconds.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import wrk
from bench.broker_load import drive_delete_posts
from bench.cases import LIST_LIMIT
from bench.dataset import BenchUser, PostPool, create_posts, read_each, refresh_tokens
from bench.measurement import LoadResult

Drive = Callable[[], Awaitable[tuple[LoadResult, float]]]
Say = Callable[[str], None]

#: Posts to have ready, per delete the fastest write or delete so far suggests: a delete may well
#: run faster than the POST that wrote its post, and the broker path skips the gateway.
SPARE = 2.5
FALLBACK_RPS = 300.0


@dataclass
class Context:
    work_dir: Path
    duration_s: int
    warmup_s: int
    gateway_url: str = ""
    amqp_url: str = ""
    hello_url: str = ""
    echo_url: str = ""
    http: aiohttp.ClientSession | None = None  # with base_url = the gateway
    writers: list[BenchUser] = field(default_factory=list)
    read_ids_file: Path | None = None
    pool: PostPool | None = None
    #: measured req/s of the cases that write or delete posts, to size the next delete run.
    writes_rps: list[float] = field(default_factory=list)
    say: Say = print


async def _warm_up(ctx: Context, run: wrk.WrkRun) -> None:
    if ctx.warmup_s > 0:
        await wrk.run_wrk(wrk.WrkRun(run.url, run.connections, ctx.warmup_s, run.script, run.args), ctx.work_dir)


def _wrk_drive(ctx: Context, run: wrk.WrkRun) -> Drive:
    return lambda: wrk.run_wrk(run, ctx.work_dir)


async def _posts_to_delete(ctx: Context) -> list[tuple[str, str]]:
    assert ctx.http is not None and ctx.pool is not None
    rate = max(ctx.writes_rps, default=FALLBACK_RPS)
    wanted = math.ceil(rate * ctx.duration_s * SPARE) + 100
    missing = wanted - len(ctx.pool.ids)
    if missing > 0:
        ctx.say(f"writing {missing} more posts to delete")
        for author_id, post_id in await create_posts(ctx.http, ctx.writers, missing):
            ctx.pool.add(author_id, post_id)
    return ctx.pool.take(wanted)


async def prepare(ctx: Context, case: str, concurrency: int) -> Drive:
    if case == "hello":
        run = wrk.WrkRun(ctx.hello_url + "/", concurrency, ctx.duration_s)
    elif case == "echo":
        run = wrk.WrkRun(ctx.echo_url + "/", concurrency, ctx.duration_s, "json_post.lua")
    elif case == "get_post":
        assert ctx.http is not None and ctx.read_ids_file is not None
        # Every id read once first, so even with --warmup 0 the run measures hits, not misses.
        await read_each(ctx.http, [f"/posts/{post_id}" for post_id in ctx.read_ids_file.read_text().split()])
        run = wrk.WrkRun(ctx.gateway_url + "/posts", concurrency, ctx.duration_s, "get_post.lua", (str(ctx.read_ids_file),))
    elif case == "list_posts":
        assert ctx.http is not None
        path = f"/posts?limit={LIST_LIMIT}"
        await read_each(ctx.http, [path])
        run = wrk.WrkRun(ctx.gateway_url + path, concurrency, ctx.duration_s)  # a plain GET of the URL, query and all
    elif case == "create_post":
        assert ctx.http is not None
        await refresh_tokens(ctx.http, ctx.writers)
        tokens = ctx.work_dir / "tokens.txt"
        tokens.write_text("".join(f"{user.token}\n" for user in ctx.writers))
        run = wrk.WrkRun(ctx.gateway_url + "/posts", concurrency, ctx.duration_s, "create_post.lua", (str(tokens),))
    elif case == "delete_post":
        assert ctx.http is not None
        await refresh_tokens(ctx.http, ctx.writers)
        items = ctx.work_dir / f"delete-{concurrency}.txt"
        items.write_text("".join(f"{token} {post_id}\n" for token, post_id in await _posts_to_delete(ctx)))
        # No warm-up: it would spend ids; the first delete case warms the path for the rest.
        return _wrk_drive(ctx, wrk.WrkRun(ctx.gateway_url + "/posts", concurrency, ctx.duration_s, "delete_post.lua", (str(items),)))
    elif case == "broker_delete":
        assert ctx.http is not None
        await refresh_tokens(ctx.http, ctx.writers)
        pairs = await _posts_to_delete(ctx)
        return lambda: drive_delete_posts(ctx.amqp_url, pairs, concurrency=concurrency, duration_s=ctx.duration_s)
    else:
        raise ValueError(f"unknown case {case!r}")
    await _warm_up(ctx, run)
    return _wrk_drive(ctx, run)
