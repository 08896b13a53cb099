"""Sessions are visible (issue 12, part 4): `list-sessions` and `end-session`.

`GET /auth/sessions` lists the caller's own open sessions: when each began and was last used (a
login or a refresh), and the user agent and address the gateway saw then, with the caller's own
session marked `current`. `DELETE /auth/sessions/{session_id}` ends one of them everywhere (a lost
phone): its access tokens are refused by every service within a second and its refresh tokens are
dead. Only the session's owner may end it: another user's session is 403 and changes nothing (the
matrix in test_every_command_is_guarded.py injects every bad credential as well). The user agent,
like the address, is believed only from the gateway.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from shared.results import SessionList
from tests.support.accounts import User, token_claims
from tests.support.broker import BrokerProbe
from tests.test_refresh_tokens import login_pair, refresh_over_http
from tests.test_revocation import refused_everywhere, status, statuses

PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) lost-phone-test"
LAPTOP = "Mozilla/5.0 (X11; Linux x86_64) laptop-test"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sid(token: str) -> str:
    return str(token_claims(token)["sid"])


async def login_as(http: aiohttp.ClientSession, user: User, user_agent: str) -> Any:
    async with http.post(
        "/auth/login", json={"email": user.email, "password": user.password}, headers={"User-Agent": user_agent}
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def listed(http: aiohttp.ClientSession, token: str) -> SessionList:
    async with http.get("/auth/sessions", headers=bearer(token)) as response:
        assert response.status == 200, await response.text()
        assert response.headers.get("Cache-Control") == "no-store"
        return SessionList.model_validate(await response.json())


async def end(http: aiohttp.ClientSession, token: str, session_id: str) -> tuple[int, Any]:
    async with http.delete(f"/auth/sessions/{session_id}", headers=bearer(token)) as response:
        return response.status, await response.json(content_type=None) if response.status != 204 else None


async def test_the_list_shows_only_my_open_sessions_with_where_and_when(http: aiohttp.ClientSession, new_user) -> None:
    me: User = await new_user()
    someone: User = await new_user()
    phone = await login_as(http, me, PHONE)
    laptop = await login_as(http, me, LAPTOP)

    sessions = (await listed(http, laptop["access_token"])).items
    by_id = {str(s.id): s for s in sessions}
    # My registration's session, the phone's and the laptop's; nobody else's.
    assert {sid(me.token), sid(phone["access_token"]), sid(laptop["access_token"])} == set(by_id)
    assert sid(someone.token) not in by_id
    seen_phone = by_id[sid(phone["access_token"])]
    assert seen_phone.user_agent == PHONE and seen_phone.address == "127.0.0.1"
    assert not seen_phone.current and by_id[sid(laptop["access_token"])].current
    assert seen_phone.last_used_at >= seen_phone.created_at


async def test_a_refresh_is_a_use(http: aiohttp.ClientSession, new_user) -> None:
    me: User = await new_user()
    phone = await login_as(http, me, PHONE)
    before = {str(s.id): s for s in (await listed(http, me.token)).items}[sid(phone["access_token"])]
    async with http.post("/auth/refresh", json={"refresh_token": phone["refresh_token"]}, headers={"User-Agent": LAPTOP}) as response:
        assert response.status == 200, await response.text()
    after = {str(s.id): s for s in (await listed(http, me.token)).items}[sid(phone["access_token"])]
    assert after.created_at == before.created_at
    assert after.last_used_at > before.last_used_at
    assert after.user_agent == LAPTOP, "the user agent is the one of the last use"


async def test_ended_and_logged_out_sessions_are_not_listed(http: aiohttp.ClientSession, new_user) -> None:
    me: User = await new_user()
    gone = await login_pair(http, me)
    async with http.post("/auth/logout", headers=bearer(gone.access_token)) as response:
        assert response.status == 204
    ended = await login_pair(http, me)
    assert (await end(http, me.token, sid(ended.access_token)))[0] == 204

    ids = {str(s.id) for s in (await listed(http, me.token)).items}
    assert ids == {sid(me.token)}


async def test_ending_my_other_session_kills_its_tokens_everywhere(
    http: aiohttp.ClientSession, broker: BrokerProbe, new_user, wait_until
) -> None:
    me: User = await new_user()
    phone = await login_pair(http, me)
    assert await statuses(broker, phone.access_token) == {"auth": "ok", "posts": "ok", "users": 403}

    code, _ = await end(http, me.token, sid(phone.access_token))

    assert code == 204
    await refused_everywhere(broker, wait_until, phone.access_token, 401)
    code, _, answer = await refresh_over_http(http, phone.refresh_token)
    assert code == 401, answer
    # The session that asked is untouched; ending the ended one again changes nothing.
    assert await statuses(broker, me.token) == {"auth": "ok", "posts": "ok", "users": 403}
    assert (await end(http, me.token, sid(phone.access_token)))[0] == 204


async def test_ending_my_current_session_is_a_logout(http: aiohttp.ClientSession, broker: BrokerProbe, new_user, wait_until) -> None:
    me: User = await new_user()
    code, _ = await end(http, me.token, me.session_id)
    assert code == 204
    await refused_everywhere(broker, wait_until, me.token, 401)


async def test_someone_elses_session_is_refused_and_stays(
    http: aiohttp.ClientSession, broker: BrokerProbe, db: asyncpg.Pool, new_user
) -> None:
    me: User = await new_user()
    victim: User = await new_user()

    code, answer = await end(http, me.token, victim.session_id)

    assert code == 403, answer
    assert answer["detail"] == "You do not have permission to end this session"
    assert await db.fetchval("SELECT revoked_at FROM auth.sessions WHERE id = $1::uuid", victim.session_id) is None
    assert await statuses(broker, victim.token) == {"auth": "ok", "posts": "ok", "users": 403}


@pytest.mark.parametrize("session_id", [str(uuid4()), "not-a-uuid", "1", "%00"])
async def test_an_unknown_or_malformed_sid_is_404(http: aiohttp.ClientSession, new_user, session_id: str) -> None:
    me: User = await new_user()
    code, answer = await end(http, me.token, session_id)
    assert code == 404, answer
    assert answer["detail"] == "No session with that id"


async def test_over_the_broker_too(http: aiohttp.ClientSession, broker: BrokerProbe, new_user, wait_until) -> None:
    me: User = await new_user()
    other = await login_pair(http, me)

    reply = await broker.command("list-sessions", {}, token=me.token)
    assert status(reply) == "ok", reply
    assert reply is not None
    items = SessionList.model_validate(reply["result"]).items
    assert {str(s.id) for s in items} == {sid(me.token), sid(other.access_token)}
    assert status(await broker.command("end-session", {"session_id": "nope"}, token=me.token)) == 422
    assert status(await broker.command("end-session", {"session_id": str(uuid4())}, token=me.token)) == 404
    assert status(await broker.command("end-session", {"session_id": sid(other.access_token)}, token=me.token)) == "ok"
    await refused_everywhere(broker, wait_until, other.access_token, 401)


async def test_a_login_over_the_broker_is_listed_under_its_publisher(http: aiohttp.ClientSession, broker: BrokerProbe, new_user) -> None:
    me: User = await new_user()
    reply = await broker.command("login", {"email": me.email, "password": me.password}, properties={"user_id": broker.outsider})
    assert status(reply) == "ok", reply
    assert reply is not None
    session = {str(s.id): s for s in (await listed(http, me.token)).items}[sid(reply["result"]["access_token"])]
    assert session.address == f"broker:{broker.outsider}" and session.user_agent is None


async def test_a_user_agent_from_anyone_but_the_gateway_is_parked(http: aiohttp.ClientSession, broker: BrokerProbe, new_user) -> None:
    me: User = await new_user()
    message_id = str(uuid4())

    reply = await broker.command(
        "login", {"email": me.email, "password": me.password}, headers={"x-client-user-agent": "Forged/1.0"}, message_id=message_id
    )

    assert status(reply) == 403, reply
    parked = await broker.parked("auth.commands", lambda m: m.message_id == message_id)
    assert "x-client-user-agent" in str(parked.headers.get("x-dead-letter-reason"))
    assert all(s.user_agent != "Forged/1.0" for s in (await listed(http, me.token)).items)
    # The gateway's word is believed, cut to a bounded length and to printable characters.
    fine = await broker.command(
        "login",
        {"email": me.email, "password": me.password},
        headers={"x-client-user-agent": "Long\x07" + "x" * 1000},
        as_process="gateway",
    )
    assert status(fine) == "ok", fine
    assert fine is not None
    session = {str(s.id): s for s in (await listed(http, me.token)).items}[sid(fine["result"]["access_token"])]
    assert session.user_agent == "Long" + "x" * 252


async def test_the_gateway_bounds_a_long_user_agent(http: aiohttp.ClientSession, new_user) -> None:
    me: User = await new_user()
    pair = await login_as(http, me, "A" * 5000)
    session = {str(s.id): s for s in (await listed(http, me.token)).items}[sid(pair["access_token"])]
    assert session.user_agent == "A" * 256
