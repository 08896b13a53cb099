"""Making users for tests through the real API, and admins through the real operator command."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aiohttp

from tests.support.stack import Stack


@dataclass
class User:
    id: str
    email: str
    password: str
    display_name: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def claims(self) -> dict[str, Any]:
        return token_claims(self.token)

    @property
    def session_id(self) -> str:
        return str(self.claims["sid"])


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a token, unverified: for reading ids in tests."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def login(http: aiohttp.ClientSession, email: str, password: str) -> str:
    async with http.post("/auth/login", json={"email": email, "password": password}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["access_token"])


async def register(http: aiohttp.ClientSession, name: str = "user") -> User:
    email = f"{name}-{uuid4().hex[:12]}@example.com"
    password = f"pw-{uuid4().hex}"
    display_name = f"{name.title()} {uuid4().hex[:4]}"
    async with http.post("/auth/register", json={"email": email, "password": password, "display_name": display_name}) as response:
        assert response.status == 201, await response.text()
        account = await response.json()
    return User(account["id"], email, password, display_name, await login(http, email, password))


async def make_admin(http: aiohttp.ClientSession, stack: Stack) -> User:
    user = await register(http, "admin")
    result = stack.run_cli("set-role", user.email, "admin")
    assert result.returncode == 0, result.stderr
    user.token = await login(http, user.email, user.password)
    return user
