"""The stack comes up and a person can do the basic things end to end."""

from __future__ import annotations

import aiohttp

from tests.support.accounts import User


async def test_register_login_post_list_delete(http: aiohttp.ClientSession, new_user) -> None:
    alice: User = await new_user("alice")
    async with http.post("/posts", json={"title": "Hello", "body": "World"}, headers=alice.auth) as response:
        assert response.status == 201
        post = await response.json()
    assert post["author_id"] == alice.id
    async with http.get("/posts", params={"limit": "5"}) as response:
        assert response.status == 200
        assert post["id"] in [p["id"] for p in (await response.json())["items"]]
    async with http.delete(f"/posts/{post['id']}", headers=alice.auth) as response:
        assert response.status == 204
    async with http.get(f"/posts/{post['id']}") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
