"""The data a run needs, made through the public API: users with fresh tokens, and posts.

Posts for `DELETE` come from a pool: the posts the `POST /posts` case wrote (found by paging
`GET /posts`) and, when those are too few, more written here. Each id is handed out once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import uuid4

import aiohttp

POST_BODY = {"title": "Benchmark post", "body": "Written by the harness"}


@dataclass
class BenchUser:
    id: str
    email: str
    password: str
    token: str = ""


@dataclass
class PostPool:
    """Unused posts by author id; `take` hands out (token, post id) pairs, each once."""

    users: dict[str, BenchUser]
    ids: list[tuple[str, str]] = field(default_factory=list)  # (author id, post id)
    seen: set[str] = field(default_factory=set)

    def add(self, author_id: str, post_id: str) -> None:
        if author_id in self.users and post_id not in self.seen:
            self.seen.add(post_id)
            self.ids.append((author_id, post_id))

    def take(self, count: int) -> list[tuple[str, str]]:
        taken, self.ids = self.ids[:count], self.ids[count:]
        return [(self.users[author].token, post_id) for author, post_id in taken]


async def _expect(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    if response.status != status:
        raise RuntimeError(f"{response.method} {response.url} answered {response.status}: {await response.text()}")
    body: dict[str, Any] = await response.json()
    return body


#: How often a request answered "busy, retry after" (503) is sent again before it counts as an error.
BUSY_RETRIES = 10


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    """POST and expect `status`. auth_service answers 503 with Retry-After when its password
    hashing is saturated (a burst of registrations or logins): like any client, wait and retry."""
    for _ in range(BUSY_RETRIES):
        async with http.post(path, json=body) as response:
            if response.status == 503 and response.headers.get("Retry-After", "").isdigit():
                await asyncio.sleep(int(response.headers["Retry-After"]))
                continue
            return await _expect(response, status)
    raise RuntimeError(f"POST {path} was still busy after {BUSY_RETRIES} tries")


async def log_in(http: aiohttp.ClientSession, user: BenchUser) -> None:
    user.token = (await _post(http, "/auth/login", {"email": user.email, "password": user.password}, 200))["access_token"]


async def create_users(http: aiohttp.ClientSession, count: int, name: str) -> list[BenchUser]:
    async def one() -> BenchUser:
        email, password = f"{name}-{uuid4().hex[:12]}@bench.example.com", f"pw-{uuid4().hex}"
        body = {"email": email, "password": password, "display_name": f"Bench {name}"}
        account = await _post(http, "/auth/register", body, 201)
        user = BenchUser(account["id"], email, password)
        await log_in(http, user)
        return user

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def refresh_tokens(http: aiohttp.ClientSession, users: list[BenchUser]) -> None:
    """New tokens, so a long run never meets an expired one."""
    await asyncio.gather(*(log_in(http, user) for user in users))


async def create_posts(http: aiohttp.ClientSession, users: list[BenchUser], count: int, concurrency: int = 32) -> list[tuple[str, str]]:
    """`count` posts, the authors in rotation: (author id, post id) pairs."""
    made: list[tuple[str, str]] = []
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            user = users[n % len(users)]
            headers = {"Authorization": f"Bearer {user.token}"}
            async with http.post("/posts", json=POST_BODY, headers=headers) as response:
                made.append((user.id, (await _expect(response, 201))["id"]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return made


async def read_each(http: aiohttp.ClientSession, paths: list[str], concurrency: int = 16) -> None:
    """GET every path once and expect 200: a gateway with a read cache then holds each of them, so
    the measured run that follows reads a warm cache (the first read of a path is a miss)."""
    queue = iter(paths)

    async def worker() -> None:
        for path in queue:
            async with http.get(path) as response:
                await _expect(response, 200)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def harvest_posts(http: aiohttp.ClientSession, pool: PostPool, since: datetime) -> int:
    """Add to the pool every post by its users written since `since` (newest first, so stop there)."""
    before, cursor = len(pool.ids), None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with http.get("/posts", params=params) as response:
            page = await _expect(response, 200)
        for post in page["items"]:
            if datetime.fromisoformat(post["created_at"]) < since:
                return len(pool.ids) - before
            pool.add(post["author_id"], post["id"])
        cursor = page["next_cursor"]
        if not cursor:
            return len(pool.ids) - before
