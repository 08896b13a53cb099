"""Nothing grows for ever (shared/retention.py, auth_service/retention.py), and nothing that can
still change an answer is forgotten: each purge runs here against the run's real database, on rows
aged by hand beside rows that must stay.

- A revoked session is remembered until every token of it has expired, then forgotten; a seen
  event for SEEN_EVENT_DAYS; an idempotency record until its token expired.
- auth_service keeps every refresh token of a session that can still be used (a used one presented
  again is how theft is caught), drops them a day after the session ended, and the session row
  ENDED_SESSION_DAYS after.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg

from auth_service.retention import ENDED_SESSION_DAYS, purge_ended_sessions
from shared.retention import REVOCATION_MARGIN_SECONDS, SEEN_EVENT_DAYS, purge_platform_tables
from shared.settings import Settings
from tests.support.accounts import token_claims
from tests.support.stack import Stack


async def test_each_platform_table_keeps_a_row_as_long_as_it_can_change_an_answer(db: asyncpg.Pool, stack: Stack) -> None:
    settings = Settings.from_env(stack.env)
    old_enough = settings.access_token_ttl_seconds + REVOCATION_MARGIN_SECONDS + 60
    rows: dict[str, UUID] = {name: uuid4() for name in ("revoked_gone", "revoked_kept", "seen_gone", "seen_kept", "cmd_gone", "cmd_kept")}
    async with db.acquire() as conn:
        await conn.execute("SET search_path TO posts")
        await conn.execute(
            "INSERT INTO revoked_sessions (session_id, revoked_at) VALUES"
            " ($1, now() - make_interval(secs => $3)), ($2, now() - make_interval(secs => $4))",
            rows["revoked_gone"],
            rows["revoked_kept"],
            float(old_enough),
            float(settings.access_token_ttl_seconds),  # a token of it may still be out there
        )
        await conn.execute(
            "INSERT INTO seen_events (event_id, seen_at) VALUES ($1, now() - make_interval(days => $3)), ($2, now() - interval '1 day')",
            rows["seen_gone"],
            rows["seen_kept"],
            SEEN_EVENT_DAYS + 1,
        )
        await conn.execute(
            "INSERT INTO processed_commands (subject, message_id, command, expires_at) VALUES"
            " ($1, 'a', 'create-post', now() - interval '1 second'), ($2, 'b', 'create-post', now() + interval '1 hour')",
            rows["cmd_gone"],
            rows["cmd_kept"],
        )
        purged = await purge_platform_tables(conn, settings)
        assert all(purged[table] >= 1 for table in ("revoked_sessions", "seen_events", "processed_commands")), purged
        left = {
            "revoked": set(
                await conn.fetchval(
                    "SELECT array_agg(session_id) FROM revoked_sessions WHERE session_id = ANY($1)",
                    [rows["revoked_gone"], rows["revoked_kept"]],
                )
            ),
            "seen": set(
                await conn.fetchval(
                    "SELECT array_agg(event_id) FROM seen_events WHERE event_id = ANY($1)", [rows["seen_gone"], rows["seen_kept"]]
                )
            ),
            "cmd": set(
                await conn.fetchval(
                    "SELECT array_agg(subject) FROM processed_commands WHERE subject = ANY($1)", [rows["cmd_gone"], rows["cmd_kept"]]
                )
            ),
        }
    assert left == {"revoked": {rows["revoked_kept"]}, "seen": {rows["seen_kept"]}, "cmd": {rows["cmd_kept"]}}


async def login_pair(http: aiohttp.ClientSession, user: Any) -> dict[str, Any]:
    async with http.post("/auth/login", json={"email": user.email, "password": user.password}) as response:
        assert response.status == 200
        pair: dict[str, Any] = await response.json()
    async with http.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}) as response:
        assert response.status == 200  # the first token is now used: it must stay while the session can be used
        return dict(await response.json())


async def test_refresh_tokens_stay_while_their_session_can_be_used(http: aiohttp.ClientSession, db: asyncpg.Pool, new_user: Any) -> None:
    live, ended, forgotten = [await login_pair(http, await new_user()) for _ in range(3)]
    sid = {
        name: UUID(token_claims(pair["access_token"])["sid"]) for name, pair in (("live", live), ("ended", ended), ("forgotten", forgotten))
    }
    async with db.acquire() as conn:
        await conn.execute("SET search_path TO auth")
        # Old tokens of a session that is still open stay, however old they are.
        await conn.execute("UPDATE refresh_tokens SET issued_at = now() - interval '20 days' WHERE session_id = $1", sid["live"])
        await conn.execute("UPDATE sessions SET revoked_at = now() - interval '2 days' WHERE id = $1", sid["ended"])
        await conn.execute(
            "UPDATE sessions SET revoked_at = now() - make_interval(days => $2) WHERE id = $1", sid["forgotten"], ENDED_SESSION_DAYS + 1
        )
        await purge_ended_sessions(conn)
        counted = await conn.fetch(
            "SELECT session_id, count(*) AS n FROM refresh_tokens WHERE session_id = ANY($1) GROUP BY session_id", list(sid.values())
        )
        tokens = {row["session_id"]: row["n"] for row in counted}
        sessions = {row["id"] for row in await conn.fetch("SELECT id FROM sessions WHERE id = ANY($1)", list(sid.values()))}
    assert tokens == {sid["live"]: 2}
    assert sessions == {sid["live"], sid["ended"]}
    async with http.post("/auth/refresh", json={"refresh_token": live["refresh_token"]}) as response:
        assert response.status == 200  # the purge touched nothing the live session needs
