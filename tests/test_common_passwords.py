"""A new account may not use one of the 10,000 most common passwords (issue 11, part 3).

The finding: `password` and `12345678` were accepted. Now a password on the list shipped in
auth_service/data/common-passwords.txt is refused with a 422 that says why, in any case, over HTTP
and over the broker alike, before anything is hashed or stored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from auth_service.common_passwords import LIST_SIZE, TOO_COMMON, common_passwords, is_common
from tests.support.broker import BrokerProbe

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "auth_service" / "data" / "common-passwords.txt"
#: From the finding, from the top of the list, from its end, and one that differs only in case.
COMMON = ["password", "12345678", "qwertyuiop", "PassWord", "Iloveyou1", "desmond1"]


def fresh_email() -> str:
    return f"common-{uuid4().hex[:12]}@example.com"


# -- the list ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_list_holds_the_10000_most_common_passwords_in_lowercase() -> None:
    lines = LIST.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == LIST_SIZE == 10_000
    assert len(common_passwords()) == LIST_SIZE, "no password is listed twice"
    assert all(line == line.lower() and line.strip() == line and line for line in lines[:-1])
    assert lines[:4] == ["123456", "123456789", "qwerty", "password"], "most common first"
    assert (ROOT / "auth_service" / "data" / "README.md").read_text().count("Royce Williams") == 1, "its source is named"
    assert "Redistribution and use" in (ROOT / "auth_service" / "data" / "common-passwords.LICENSE").read_text()


@pytest.mark.unit
def test_the_list_is_package_data() -> None:
    """`python -m auth_service` from an installed package must find the list too."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    assert "data/*.txt" in package_data and "data/*.LICENSE" in package_data


@pytest.mark.unit
@pytest.mark.parametrize("password", [*COMMON, "#1bitch"])
def test_common_passwords_are_recognised_in_any_case(password: str) -> None:
    assert is_common(password) and is_common(password.upper())


@pytest.mark.unit
@pytest.mark.parametrize("password", ["correct horse battery", "pw-" + "0" * 32, "password with more words"])
def test_other_passwords_are_not(password: str) -> None:
    assert not is_common(password)


@pytest.mark.unit
def test_no_test_registers_with_a_common_password() -> None:
    """The suite's own fixed passwords are not on the list (the random ones cannot be)."""
    for password in ("correct horse battery", "another good password", "correct-horse-battery", "wrong-password", "wrong password"):
        assert not is_common(password), password


# -- refused over HTTP and over the broker -------------------------------------------------------


@pytest.mark.parametrize("password", COMMON)
async def test_a_common_password_is_refused_with_422_over_http(http: aiohttp.ClientSession, db: asyncpg.Pool, password: str) -> None:
    email = fresh_email()
    body = {"email": email, "password": password, "display_name": "Common"}
    async with http.post("/auth/register", json=body) as response:
        problem: dict[str, Any] = await response.json(content_type=None)
        assert response.status == 422, problem
        assert response.content_type == "application/problem+json"
    assert problem["detail"] == TOO_COMMON
    assert "10,000 most common passwords" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE email = $1", email) == 0


async def test_a_common_password_is_refused_with_422_over_the_broker(broker: BrokerProbe, db: asyncpg.Pool) -> None:
    email = fresh_email()
    reply = await broker.command("register", {"email": email, "password": "12345678", "display_name": "Common"})
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"]["status"] == 422 and reply["error"]["detail"] == TOO_COMMON, reply
    assert await db.fetchval("SELECT count(*) FROM auth.accounts WHERE email = $1", email) == 0


async def test_a_strong_password_is_accepted(http: aiohttp.ClientSession, broker: BrokerProbe) -> None:
    body = {"email": fresh_email(), "password": "correct horse battery", "display_name": "Strong"}
    async with http.post("/auth/register", json=body) as response:
        assert response.status == 201, await response.text()
    reply = await broker.command("register", {**body, "email": fresh_email()})
    assert reply is not None and reply["ok"] is True, reply
    async with http.post("/auth/login", json={"email": body["email"], "password": body["password"]}) as response:
        assert response.status == 200, await response.text()
