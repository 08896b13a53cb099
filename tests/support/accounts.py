"""Making users for tests through the real API, and admins through the real operator command."""

from __future__ import annotations

import asyncio
import base64
import json
import time
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


#: How long setting up a user may wait out a busy hasher (several tests make users at once, and
#: auth_service answers a full hashing lane with 503 and Retry-After, as it should).
BUSY_PATIENCE_SECONDS = 30.0


async def _post_patiently(http: aiohttp.ClientSession, path: str, body: dict[str, str], expected: int) -> Any:
    """POST as a well-behaved client does: a busy 503 is retried after its Retry-After."""
    deadline = time.monotonic() + BUSY_PATIENCE_SECONDS
    while True:
        async with http.post(path, json=body) as response:
            if response.status == 503 and time.monotonic() < deadline:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            assert response.status == expected, await response.text()
            return await response.json()


async def login(http: aiohttp.ClientSession, email: str, password: str) -> str:
    answer = await _post_patiently(http, "/auth/login", {"email": email, "password": password}, 200)
    return str(answer["access_token"])


async def register(http: aiohttp.ClientSession, name: str = "user") -> User:
    email = f"{name}-{uuid4().hex[:12]}@example.com"
    password = f"pw-{uuid4().hex}"
    display_name = f"{name.title()} {uuid4().hex[:4]}"
    account = await _post_patiently(http, "/auth/register", {"email": email, "password": password, "display_name": display_name}, 201)
    return User(account["id"], email, password, display_name, await login(http, email, password))


async def make_admin(http: aiohttp.ClientSession, stack: Stack) -> User:
    user = await register(http, "admin")
    result = stack.run_cli("set-role", user.email, "admin")
    assert result.returncode == 0, result.stderr
    user.token = await login(http, user.email, user.password)
    return user
