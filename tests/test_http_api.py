"""The gateway's HTTP API, route by route, as the contract's table states it.

Every route gets its happy path and each error status the contract lists. Bodies are checked
against the response models in `gateway.schemas`; every error must be `application/problem+json`
with type, title, status, detail and the request id. Where an effect matters (a row created or
not, a ban recorded or not) the test reads the database as well as the response.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg

from gateway.schemas import Account, Post, PostPage, Problem, TokenResponse, UserProfile
from tests.support.accounts import User

PROBLEM_JSON = "application/problem+json"
WRONG_TYPE_BODIES = {
    "password": 12345678,
    "display_name": ["not", "a", "string"],
}


# -- helpers ---------------------------------------------------------------------------------


async def expect_problem(response: aiohttp.ClientResponse, status: int, detail: str | None = None) -> Problem:
    """Assert `response` is a problem+json of `status` (and `detail`), carrying the request id."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_JSON, (response.content_type, text)
    problem = Problem.model_validate_json(text)
    assert problem.status == status
    assert problem.type and problem.title and problem.detail.strip()
    if detail is not None:
        assert problem.detail == detail
    assert problem.request_id, f"no request id in {text}"
    assert response.headers.get("X-Request-ID") == problem.request_id
    if status == 401:  # RFC 6750 §3: a 401 says which scheme would do
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers
    return problem


def fresh_email(name: str = "user") -> str:
    return f"{name}-{uuid4().hex[:12]}@example.com"


def registration(**overrides: Any) -> dict[str, Any]:
    body = {"email": fresh_email(), "password": f"pw-{uuid4().hex}", "display_name": "Someone"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def create_post(http: aiohttp.ClientSession, user: User, title: str = "A title", body: str = "A body") -> Post:
    async with http.post("/posts", json={"title": title, "body": body}, headers=user.auth) as response:
        assert response.status == 201, await response.text()
        return Post.model_validate(await response.json())


async def profile_exists(http: aiohttp.ClientSession, user_id: str) -> bool:
    async with http.get(f"/users/{user_id}") as response:
        return response.status == 200


async def ban(http: aiohttp.ClientSession, wait_until, admin: User, target: User) -> None:
    """Ban `target` as `admin`, once users_service knows the target (profiles come from an event)."""
    await wait_until(lambda: profile_exists(http, target.id))
    async with http.post(f"/users/{target.id}/ban", json={"reason": "test"}, headers=admin.auth) as response:
        assert response.status == 200, await response.text()


def status_is(http: aiohttp.ClientSession, method: str, path: str, status: int, **kwargs: Any) -> Callable[[], Awaitable[bool]]:
    """A check for `wait_until`: does `method path` answer `status` now?"""

    async def check() -> bool:
        async with http.request(method, path, **kwargs) as response:
            return response.status == status

    return check


# -- POST /auth/register ---------------------------------------------------------------------


async def test_register_returns_the_account_without_secrets(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    body = registration(display_name="Reggie")
    async with http.post("/auth/register", json=body) as response:
        assert response.status == 201, await response.text()
        assert response.content_type == "application/json"
        data = await response.json()
    account = Account.model_validate(data)
    assert set(data) == {"id", "email", "display_name", "role"}
    assert account.email == body["email"]
    assert account.display_name == "Reggie"
    assert account.role == "user"
    assert body["password"] not in str(data)
    row = await db.fetchrow("SELECT email, role, password_hash FROM auth.accounts WHERE id = $1", account.id)
    assert row is not None and row["email"] == body["email"] and row["role"] == "user"
    assert row["password_hash"] != body["password"]


async def test_register_duplicate_email_is_409_case_insensitively(http: aiohttp.ClientSession) -> None:
    local = f"dup-{uuid4().hex[:10]}"
    async with http.post("/auth/register", json=registration(email=f"{local.upper()}@X.io")) as response:
        assert response.status == 201, await response.text()
    async with http.post("/auth/register", json=registration(email=f"{local}@x.io")) as response:
        await expect_problem(response, 409)


async def test_register_bad_email_is_422(http: aiohttp.ClientSession) -> None:
    async with http.post("/auth/register", json=registration(email="not-an-email")) as response:
        await expect_problem(response, 422)


async def test_register_short_password_is_422(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    body = registration(password="short")
    async with http.post("/auth/register", json=body) as response:
        await expect_problem(response, 422)
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE email = $1", body["email"]) == 0


async def test_register_missing_field_is_422(http: aiohttp.ClientSession) -> None:
    body = registration()
    del body["display_name"]
    async with http.post("/auth/register", json=body) as response:
        await expect_problem(response, 422)


async def test_register_extra_role_field_is_422_and_creates_no_admin(http: aiohttp.ClientSession, db: asyncpg.Pool) -> None:
    body = registration(role="admin")
    async with http.post("/auth/register", json=body) as response:
        await expect_problem(response, 422)
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE lower(email) = lower($1)", body["email"]) == 0


async def test_register_wrong_types_are_422(http: aiohttp.ClientSession) -> None:
    for field, value in WRONG_TYPE_BODIES.items():
        async with http.post("/auth/register", json=registration(**{field: value})) as response:
            await expect_problem(response, 422)


async def test_register_malformed_json_is_400(http: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post("/auth/register", data=b'{"email": "a@b.io", ', headers=headers) as response:
        await expect_problem(response, 400)


async def test_register_two_megabyte_body_is_413(http: aiohttp.ClientSession) -> None:
    body = registration(display_name="x" * (2 * 1024 * 1024))
    async with http.post("/auth/register", json=body) as response:
        await expect_problem(response, 413)


# -- POST /auth/login ------------------------------------------------------------------------


async def test_login_returns_a_bearer_token(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("login")
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        assert response.status == 200, await response.text()
        token = TokenResponse.model_validate(await response.json())
    assert token.token_type == "Bearer"
    assert token.expires_in == 900  # ACCESS_TOKEN_TTL_SECONDS of the test stack
    async with http.get("/auth/me", headers={"Authorization": f"Bearer {token.access_token}"}) as response:
        assert response.status == 200


async def test_login_email_is_case_insensitive(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("case")
    async with http.post("/auth/login", json={"email": user.email.upper(), "password": user.password}) as response:
        assert response.status == 200, await response.text()


async def test_login_wrong_password_and_unknown_email_are_the_same_401(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("enum")
    async with http.post("/auth/login", json={"email": user.email, "password": "wrong-password"}) as response:
        wrong_password = await expect_problem(response, 401)
    async with http.post("/auth/login", json={"email": fresh_email("nobody"), "password": "wrong-password"}) as response:
        unknown_email = await expect_problem(response, 401)
    assert unknown_email.detail == wrong_password.detail
    assert unknown_email.title == wrong_password.title


async def test_login_invalid_body_is_422(http: aiohttp.ClientSession) -> None:
    async with http.post("/auth/login", json={"email": fresh_email()}) as response:
        await expect_problem(response, 422)


async def test_login_banned_user_is_403(http: aiohttp.ClientSession, new_user, new_admin, wait_until) -> None:
    admin: User = await new_admin()
    user: User = await new_user("banned")
    await ban(http, wait_until, admin, user)
    credentials = {"email": user.email, "password": user.password}
    await wait_until(status_is(http, "POST", "/auth/login", 403, json=credentials))
    async with http.post("/auth/login", json=credentials) as response:
        await expect_problem(response, 403)


async def test_login_is_rate_limited_per_account(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("limited")
    wrong = {"email": user.email, "password": "wrong-password"}
    for _ in range(5):
        async with http.post("/auth/login", json=wrong) as response:
            await expect_problem(response, 401)
    async with http.post("/auth/login", json=wrong) as response:
        await expect_problem(response, 429)
        retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit()
    assert 1 <= int(retry_after) <= 300
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        await expect_problem(response, 429)
        assert response.headers.get("Retry-After", "").isdigit()


# -- POST /auth/logout -----------------------------------------------------------------------


async def test_logout_revokes_the_token_everywhere(http: aiohttp.ClientSession, new_user, wait_until) -> None:
    user: User = await new_user("logout")
    async with http.post("/auth/logout", headers=user.auth) as response:
        assert response.status == 204, await response.text()
        assert await response.read() == b""
    await wait_until(status_is(http, "GET", "/auth/me", 401, headers=user.auth))
    await wait_until(status_is(http, "POST", "/posts", 401, headers=user.auth, json={"title": "t", "body": "b"}))
    async with http.get("/auth/me", headers=user.auth) as response:
        await expect_problem(response, 401)
    async with http.post("/posts", json={"title": "after", "body": "logout"}, headers=user.auth) as response:
        await expect_problem(response, 401)


async def test_logout_without_a_token_is_401(http: aiohttp.ClientSession) -> None:
    async with http.post("/auth/logout") as response:
        await expect_problem(response, 401)
    async with http.post("/auth/logout", headers={"Authorization": "Bearer not-a-jwt"}) as response:
        await expect_problem(response, 401)


# -- GET /auth/me ----------------------------------------------------------------------------


async def test_me_returns_the_signed_in_account(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("me")
    async with http.get("/auth/me", headers=user.auth) as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    account = Account.model_validate(data)
    assert set(data) == {"id", "email", "display_name", "role"}
    assert (str(account.id), account.email, account.display_name, account.role) == (user.id, user.email, user.display_name, "user")


async def test_me_without_a_token_is_401(http: aiohttp.ClientSession) -> None:
    async with http.get("/auth/me") as response:
        await expect_problem(response, 401)


async def test_me_banned_is_403(http: aiohttp.ClientSession, new_user, new_admin, wait_until) -> None:
    admin: User = await new_admin()
    user: User = await new_user("me-banned")
    await ban(http, wait_until, admin, user)
    await wait_until(status_is(http, "GET", "/auth/me", 403, headers=user.auth))
    async with http.get("/auth/me", headers=user.auth) as response:
        await expect_problem(response, 403)


# -- GET /posts ------------------------------------------------------------------------------


async def test_list_posts_is_newest_first(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("lister")
    first = await create_post(http, user, "first")
    second = await create_post(http, user, "second")
    async with http.get("/posts") as response:
        assert response.status == 200, await response.text()
        page = PostPage.model_validate(await response.json())
    ids = [p.id for p in page.items]
    assert len(page.items) <= 20  # the default limit
    assert ids.index(second.id) < ids.index(first.id)
    times = [datetime.fromisoformat(p.created_at) for p in page.items]
    assert times == sorted(times, reverse=True)


async def walk_pages(http: aiohttp.ClientSession, limit: int, *, until: Callable[[list[Post]], bool], max_pages: int) -> list[Post]:
    """Follow next_cursor from the first page until `until(seen)` or the last page."""
    seen: list[Post] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        async with http.get("/posts", params=params) as response:
            assert response.status == 200, await response.text()
            page = PostPage.model_validate(await response.json())
        assert len(page.items) <= limit
        if page.next_cursor is not None:
            assert len(page.items) == limit
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None or until(seen):
            return seen
    raise AssertionError(f"pagination did not end within {max_pages} pages")


async def test_list_posts_pages_through_everything_once(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("pager")
    created = [await create_post(http, user, f"post {i}") for i in range(5)]

    # Small pages from the top until all five of mine have shown up (they are the newest).
    seen = await walk_pages(http, 2, until=lambda s: sum(str(p.author_id) == user.id for p in s) == 5, max_pages=50)
    ids = [p.id for p in seen]
    assert len(ids) == len(set(ids)), "a post appeared on two pages"
    times = [datetime.fromisoformat(p.created_at) for p in seen]
    assert times == sorted(times, reverse=True)
    assert [p.id for p in seen if str(p.author_id) == user.id] == [p.id for p in reversed(created)]

    # Large pages all the way to the end: the last page says so, and nothing repeats.
    everything = await walk_pages(http, 100, until=lambda _: False, max_pages=10_000)
    all_ids = [p.id for p in everything]
    assert len(all_ids) == len(set(all_ids))
    assert {p.id for p in seen} <= set(all_ids)


async def test_list_posts_bad_query_is_422(http: aiohttp.ClientSession) -> None:
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "abc"}, {"cursor": "not-a-real-cursor!!"}):
        async with http.get("/posts", params=params) as response:
            await expect_problem(response, 422)


# -- GET /posts/{id} -------------------------------------------------------------------------


async def test_get_post_returns_it(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("getter")
    post = await create_post(http, user, "Readable", "Text")
    async with http.get(f"/posts/{post.id}") as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    assert set(data) == {"id", "author_id", "title", "body", "created_at"}
    assert Post.model_validate(data) == post


async def test_get_unknown_post_is_404(http: aiohttp.ClientSession) -> None:
    async with http.get(f"/posts/{uuid4()}") as response:
        await expect_problem(response, 404)


async def test_get_post_with_a_non_uuid_id_is_404_or_422(http: aiohttp.ClientSession) -> None:
    for bad in ("not-a-uuid", "1", "%27%20OR%201=1"):
        async with http.get(f"/posts/{bad}") as response:
            assert response.status in (404, 422), await response.text()
            await expect_problem(response, response.status)


# -- POST /posts -----------------------------------------------------------------------------


async def test_create_post_returns_201_with_location(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("author")
    async with http.post("/posts", json={"title": "Hello", "body": "World"}, headers=user.auth) as response:
        assert response.status == 201, await response.text()
        post = Post.model_validate(await response.json())
        location = response.headers.get("Location")
    assert location == f"/posts/{post.id}"
    assert (str(post.author_id), post.title, post.body) == (user.id, "Hello", "World")
    row = await db.fetchrow("SELECT author_id, title, body FROM posts.posts WHERE id = $1", post.id)
    assert row is not None
    assert (str(row["author_id"]), row["title"], row["body"]) == (user.id, "Hello", "World")


async def test_create_post_without_a_token_is_401(http: aiohttp.ClientSession) -> None:
    async with http.post("/posts", json={"title": "t", "body": "b"}) as response:
        await expect_problem(response, 401)


async def test_create_post_banned_is_403(http: aiohttp.ClientSession, new_user, new_admin, wait_until, db: asyncpg.Pool) -> None:
    admin: User = await new_admin()
    user: User = await new_user("post-banned")
    await ban(http, wait_until, admin, user)
    body = {"title": "t", "body": "b"}

    async def posts_knows() -> bool:  # polled on a read: polling with POST would create posts
        return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.banned_accounts WHERE user_id = $1)", user.id))

    await wait_until(posts_knows)
    async with http.post("/posts", json=body, headers=user.auth) as response:
        await expect_problem(response, 403)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0


async def test_create_post_invalid_bodies_are_422(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("invalid")
    for body in ({"title": "   ", "body": "b"}, {"title": "t"}, {"title": 5, "body": "b"}):
        async with http.post("/posts", json=body, headers=user.auth) as response:
            await expect_problem(response, 422)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", user.id) == 0


async def test_create_post_author_id_field_is_422_and_grants_nothing(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("forger")
    victim: User = await new_user("victim")
    title = f"forged {uuid4().hex}"
    async with http.post("/posts", json={"title": title, "body": "b", "author_id": victim.id}, headers=user.auth) as response:
        await expect_problem(response, 422)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 0
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", victim.id) == 0
    # The author of a post is always the caller, whatever the request says.
    post = await create_post(http, user, title)
    assert await db.fetchval("SELECT author_id::text FROM posts.posts WHERE id = $1", post.id) == user.id


# -- PATCH /posts/{id} -----------------------------------------------------------------------


async def post_in_db(db: asyncpg.Pool, post_id: Any) -> tuple[str, str] | None:
    row = await db.fetchrow("SELECT title, body FROM posts.posts WHERE id = $1", post_id)
    return None if row is None else (row["title"], row["body"])


async def test_author_edits_the_title_and_keeps_the_body(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("editor")
    post = await create_post(http, user, "First title", "The body stays")
    async with http.patch(f"/posts/{post.id}", json={"title": "  Second title "}, headers=user.auth) as response:
        assert response.status == 200, await response.text()
        edited = Post.model_validate(await response.json())
    assert (edited.id, edited.author_id, edited.created_at) == (post.id, post.author_id, post.created_at)
    assert (edited.title, edited.body) == ("Second title", "The body stays")
    assert await post_in_db(db, post.id) == ("Second title", "The body stays")
    async with http.patch(f"/posts/{post.id}", json={"body": "New body", "title": "Third"}, headers=user.auth) as response:
        assert response.status == 200, await response.text()
    async with http.get(f"/posts/{post.id}") as response:
        assert (await response.json())["body"] == "New body"


async def test_an_admin_who_is_not_the_author_cannot_edit(http: aiohttp.ClientSession, new_user, new_admin, db: asyncpg.Pool) -> None:
    author, admin = await new_user("author"), await new_admin()
    post = await create_post(http, author)
    async with http.patch(f"/posts/{post.id}", json={"title": "Admin was here"}, headers=admin.auth) as response:
        await expect_problem(response, 403, "You do not have permission to edit this post")
    assert await post_in_db(db, post.id) == ("A title", "A body")


async def test_another_user_cannot_edit(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    author, other = await new_user("author"), await new_user("other")
    post = await create_post(http, author)
    async with http.patch(f"/posts/{post.id}", json={"body": "Mine now"}, headers=other.auth) as response:
        await expect_problem(response, 403, "You do not have permission to edit this post")
    async with http.patch(f"/posts/{post.id}", json={"body": "Mine now"}) as response:
        await expect_problem(response, 401)
    assert await post_in_db(db, post.id) == ("A title", "A body")


async def test_edit_unknown_post_is_404(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("ghost")
    async with http.patch(f"/posts/{uuid4()}", json={"title": "x"}, headers=user.auth) as response:
        await expect_problem(response, 404, "No post with that id")
    async with http.patch("/posts/not-a-uuid", json={"title": "x"}, headers=user.auth) as response:
        await expect_problem(response, 404, "No post with that id")


async def test_edit_bodies_that_change_nothing_or_too_much_are_refused(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("careful")
    post = await create_post(http, user)
    refusals: list[tuple[Any, int]] = [
        ({}, 422),
        ({"title": None, "body": None}, 422),
        ({"title": " "}, 422),
        ({"title": 5}, 422),
        ({"title": "x", "author_id": user.id}, 422),
        ({"post_id": str(uuid4()), "title": "x"}, 422),
        ([], 422),
        ("a string", 422),
    ]
    for body, status in refusals:
        async with http.patch(f"/posts/{post.id}", json=body, headers=user.auth) as response:
            await expect_problem(response, status)
    async with http.patch(f"/posts/{post.id}", data=b"{not json", headers={**user.auth, "Content-Type": "application/json"}) as response:
        await expect_problem(response, 400)
    async with http.patch(f"/posts/{post.id}", headers=user.auth) as response:
        await expect_problem(response, 400, "The body is not valid JSON")  # no body at all, as for POST /posts
    assert await post_in_db(db, post.id) == ("A title", "A body")


async def test_edit_with_an_idempotency_key_is_applied_once(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("retrier")
    post = await create_post(http, user)
    headers = {**user.auth, "Idempotency-Key": f"edit-{uuid4()}"}
    async with http.patch(f"/posts/{post.id}", json={"title": "Once"}, headers=headers) as response:
        first = await response.json()
    await db.execute("UPDATE posts.posts SET title = 'Changed since' WHERE id = $1", post.id)
    async with http.patch(f"/posts/{post.id}", json={"title": "Once"}, headers=headers) as response:
        assert response.status == 200 and await response.json() == first  # the first answer, not a second effect
    assert await post_in_db(db, post.id) == ("Changed since", "A body")


# -- DELETE /posts/{id} ----------------------------------------------------------------------


async def test_author_deletes_own_post(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("deleter")
    post = await create_post(http, user)
    async with http.delete(f"/posts/{post.id}", headers=user.auth) as response:
        assert response.status == 204, await response.text()
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE id = $1", post.id) == 0
    async with http.get(f"/posts/{post.id}") as response:
        await expect_problem(response, 404)


async def test_admin_deletes_someone_elses_post(http: aiohttp.ClientSession, new_user, new_admin, db: asyncpg.Pool) -> None:
    admin: User = await new_admin()
    user: User = await new_user("moderated")
    post = await create_post(http, user)
    async with http.delete(f"/posts/{post.id}", headers=admin.auth) as response:
        assert response.status == 204, await response.text()
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE id = $1", post.id) == 0


async def test_other_user_cannot_delete_a_post(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    author: User = await new_user("owner")
    other: User = await new_user("intruder")
    post = await create_post(http, author)
    async with http.delete(f"/posts/{post.id}", headers=other.auth) as response:
        await expect_problem(response, 403, "You do not have permission to delete this post")
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE id = $1", post.id) == 1


async def test_delete_unknown_post_is_404(http: aiohttp.ClientSession, new_user) -> None:
    user: User = await new_user("ghost")
    async with http.delete(f"/posts/{uuid4()}", headers=user.auth) as response:
        await expect_problem(response, 404)
    async with http.delete("/posts/not-a-uuid", headers=user.auth) as response:
        assert response.status in (404, 422), await response.text()
        await expect_problem(response, response.status)


async def test_delete_post_without_a_token_is_401(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    user: User = await new_user("keeper")
    post = await create_post(http, user)
    async with http.delete(f"/posts/{post.id}") as response:
        await expect_problem(response, 401)
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE id = $1", post.id) == 1


# -- GET /users/{id} -------------------------------------------------------------------------


async def test_get_user_returns_the_public_profile(http: aiohttp.ClientSession, new_user, wait_until) -> None:
    user: User = await new_user("profile")
    await wait_until(lambda: profile_exists(http, user.id))
    async with http.get(f"/users/{user.id}") as response:
        assert response.status == 200, await response.text()
        text = await response.text()
        data = await response.json()
    assert set(data) == {"id", "display_name", "banned"}
    profile = UserProfile.model_validate(data)
    assert (str(profile.id), profile.display_name, profile.banned) == (user.id, user.display_name, False)
    assert user.email not in text


async def test_get_unknown_user_is_404(http: aiohttp.ClientSession) -> None:
    async with http.get(f"/users/{uuid4()}") as response:
        await expect_problem(response, 404)
    async with http.get("/users/not-a-uuid") as response:
        assert response.status in (404, 422), await response.text()
        await expect_problem(response, response.status)


# -- POST /users/{id}/ban --------------------------------------------------------------------


async def test_admin_bans_a_user_and_again(http: aiohttp.ClientSession, new_user, new_admin, wait_until, db: asyncpg.Pool) -> None:
    admin: User = await new_admin()
    user: User = await new_user("target")
    await wait_until(lambda: profile_exists(http, user.id))
    for _ in range(2):
        async with http.post(f"/users/{user.id}/ban", json={"reason": "spam"}, headers=admin.auth) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
        assert set(data) == {"id", "display_name", "banned"}
        profile = UserProfile.model_validate(data)
        assert (str(profile.id), profile.display_name, profile.banned) == (user.id, user.display_name, True)
    row = await db.fetchrow("SELECT banned, banned_by, ban_reason FROM users.profiles WHERE id = $1", user.id)
    assert row is not None
    assert row["banned"] is True and str(row["banned_by"]) == admin.id and row["ban_reason"] == "spam"
    async with http.get(f"/users/{user.id}") as response:
        assert UserProfile.model_validate(await response.json()).banned is True


async def test_ban_reason_is_optional(http: aiohttp.ClientSession, new_user, new_admin, wait_until, db: asyncpg.Pool) -> None:
    admin: User = await new_admin()
    no_body: User = await new_user("no-body")
    empty_object: User = await new_user("empty-object")
    for user, json in ((no_body, None), (empty_object, {})):
        await wait_until(partial(profile_exists, http, user.id))
        async with http.post(f"/users/{user.id}/ban", headers=admin.auth, json=json) as response:
            assert response.status == 200, await response.text()
            assert UserProfile.model_validate(await response.json()).banned is True
        assert await db.fetchval("SELECT banned FROM users.profiles WHERE id = $1", user.id) is True


async def test_ban_without_a_token_is_401(http: aiohttp.ClientSession, new_user, wait_until, db: asyncpg.Pool) -> None:
    user: User = await new_user("untouched")
    await wait_until(lambda: profile_exists(http, user.id))
    async with http.post(f"/users/{user.id}/ban", json={}) as response:
        await expect_problem(response, 401)
    assert await db.fetchval("SELECT banned FROM users.profiles WHERE id = $1", user.id) is False


async def test_ban_by_a_non_admin_is_403(http: aiohttp.ClientSession, new_user, wait_until, db: asyncpg.Pool) -> None:
    user: User = await new_user("vigilante")
    target: User = await new_user("innocent")
    await wait_until(lambda: profile_exists(http, target.id))
    async with http.post(f"/users/{target.id}/ban", json={"reason": "I say so"}, headers=user.auth) as response:
        await expect_problem(response, 403)
    assert await db.fetchval("SELECT banned FROM users.profiles WHERE id = $1", target.id) is False
    assert await db.fetchval("SELECT count(*) FROM users.banned_accounts WHERE user_id = $1", target.id) == 0


async def test_ban_unknown_user_is_404(http: aiohttp.ClientSession, new_admin) -> None:
    admin: User = await new_admin()
    async with http.post(f"/users/{uuid4()}/ban", json={}, headers=admin.auth) as response:
        await expect_problem(response, 404)


async def test_banned_users_token_is_refused_within_a_second(http: aiohttp.ClientSession, new_user, new_admin, wait_until) -> None:
    admin: User = await new_admin()
    user: User = await new_user("cut-off")
    await wait_until(lambda: profile_exists(http, user.id))
    async with http.get("/auth/me", headers=user.auth) as response:
        assert response.status == 200
    async with http.post(f"/users/{user.id}/ban", json={}, headers=admin.auth) as response:
        assert response.status == 200, await response.text()
    await wait_until(status_is(http, "GET", "/auth/me", 403, headers=user.auth))
    await wait_until(status_is(http, "POST", "/posts", 403, headers=user.auth, json={"title": "t", "body": "b"}))


# -- Idempotency-Key -------------------------------------------------------------------------


async def test_idempotency_key_makes_a_retry_harmless(http: aiohttp.ClientSession, new_user, db: asyncpg.Pool) -> None:
    alice: User = await new_user("retry-a")
    bob: User = await new_user("retry-b")
    key = f"key-{uuid4().hex}"
    body = {"title": "Once", "body": "Only once"}
    ids = []
    for _ in range(2):
        async with http.post("/posts", json=body, headers={**alice.auth, "Idempotency-Key": key}) as response:
            assert response.status == 201, await response.text()
            ids.append(Post.model_validate(await response.json()).id)
    assert ids[0] == ids[1]
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", alice.id) == 1

    async with http.post("/posts", json=body, headers={**bob.auth, "Idempotency-Key": key}) as response:
        assert response.status == 201, await response.text()
        bobs = Post.model_validate(await response.json())
    assert bobs.id != ids[0]
    assert str(bobs.author_id) == bob.id
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", bob.id) == 1
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", alice.id) == 1


async def test_the_same_key_with_another_body_is_422_even_once_the_post_is_gone(
    http: aiohttp.ClientSession, new_user, db: asyncpg.Pool
) -> None:
    """The IETF idempotency-key draft: a key re-used for a different request is the client's
    bug, answered 422, never with the first request's result (here, a post since deleted)."""
    alice: User = await new_user("rekey")
    key = f"key-{uuid4().hex}"
    first = {"title": "First", "body": "one"}
    headers = {**alice.auth, "Idempotency-Key": key}
    async with http.post("/posts", json=first, headers=headers) as response:
        assert response.status == 201, await response.text()
        post_id = Post.model_validate(await response.json()).id
    # Another order of the same fields is the same request.
    async with http.post("/posts", json={"body": "one", "title": "First"}, headers=headers) as response:
        assert response.status == 201, await response.text()
        assert Post.model_validate(await response.json()).id == post_id
    another = {"title": "Second", "body": "two"}
    async with http.post("/posts", json=another, headers=headers) as response:
        assert response.status == 422, await response.text()
        assert "different payload" in Problem.model_validate_json(await response.text()).detail
    delete_key = {**alice.auth, "Idempotency-Key": f"del-{uuid4().hex}"}
    async with http.delete(f"/posts/{post_id}", headers=delete_key) as response:
        assert response.status == 204, await response.text()
    async with http.post("/posts", json=another, headers=headers) as response:
        assert response.status == 422, await response.text()
    # The key's own request still gets its first answer.
    async with http.post("/posts", json=first, headers=headers) as response:
        assert response.status == 201, await response.text()
        assert Post.model_validate(await response.json()).id == post_id
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE author_id = $1", alice.id) == 0

    # The delete's key on another post: refused, and that post is untouched.
    async with http.post("/posts", json=another, headers=alice.auth) as response:
        assert response.status == 201, await response.text()
        other_id = Post.model_validate(await response.json()).id
    async with http.delete(f"/posts/{other_id}", headers=delete_key) as response:
        assert response.status == 422, await response.text()
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE id = $1", other_id) == 1


# -- platform routes -------------------------------------------------------------------------

CONTRACT_ROUTES = {
    "/auth/register": {"post"},
    "/auth/login": {"post"},
    "/auth/logout": {"post"},
    "/auth/me": {"get"},
    "/posts": {"get", "post"},
    "/posts/{}": {"get", "patch", "delete"},
    "/users/{}": {"get"},
    "/users/{}/ban": {"post"},
}


async def test_openapi_documents_every_route(http: aiohttp.ClientSession) -> None:
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.1")
    paths = {re.sub(r"\{[^}]*\}", "{}", path): ops for path, ops in document["paths"].items()}
    for path, methods in CONTRACT_ROUTES.items():
        assert path in paths, f"{path} is not documented"
        assert methods <= set(paths[path]), f"{path}: {methods - set(paths[path])} not documented"


async def test_index_is_html(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "<html" in (await response.text()).lower()


async def test_health_and_readiness(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
    async with http.get("/readyz") as response:
        assert response.status == 200, await response.text()


async def test_metrics_are_prometheus_text(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz"):
        pass
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert "# TYPE http_requests_total counter" in text
    assert re.search(r"^http_requests_total\{.*\} \d", text, re.MULTILINE)


async def test_jwks_through_the_gateway(http: aiohttp.ClientSession) -> None:
    async with http.get("/.well-known/jwks.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["keys"], "no keys"
    for key in document["keys"]:
        assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
        assert key["kid"] and key["x"]
        assert "d" not in key, "a private key is published"


# -- errors the gateway answers itself -------------------------------------------------------


async def test_unknown_route_is_404_problem(http: aiohttp.ClientSession) -> None:
    async with http.get("/no/such/route") as response:
        await expect_problem(response, 404)


async def test_wrong_method_is_405_problem(http: aiohttp.ClientSession) -> None:
    async with http.put("/posts", json={}) as response:
        await expect_problem(response, 405)
        assert "GET" in response.headers.get("Allow", "") and "POST" in response.headers.get("Allow", "")


async def test_client_request_id_is_echoed(http: aiohttp.ClientSession) -> None:
    request_id = f"test-{uuid4().hex}"
    async with http.get("/healthz", headers={"X-Request-ID": request_id}) as response:
        assert response.status == 200
        assert response.headers.get("X-Request-ID") == request_id
    async with http.get(f"/posts/{uuid4()}", headers={"X-Request-ID": request_id}) as response:
        problem = await expect_problem(response, 404)
    assert problem.request_id == request_id
