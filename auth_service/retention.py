"""What auth_service forgets, and when: sessions and refresh tokens that can no longer be used.

A session's refresh tokens stay while the session can still be used, used ones too: a used token
presented again is how theft is detected, and it must be recognised for as long as the session it
could kill is alive. Once the session has ended (closed, or past both its access token's and its
refresh tokens' expiry) for a day, its refresh tokens go; its row stays `ENDED_SESSION_DAYS` (an
owner or an operator looking into a theft may want it) and then goes too. Rate-limit rows are
purged where they are written (repository.py); the platform tables by shared/retention.py.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from shared.database import Connection
from shared.retention import delete_in_batches, purge_every, report

log = logging.getLogger(__name__)

PURGE_SECONDS = 300.0
ENDED_SESSION_DAYS = 30
#: When a session ended: closed, or the last moment any of its tokens could be used.
_ENDED_AT = "coalesce(revoked_at, greatest(expires_at, coalesce(refresh_until, expires_at)))"


async def purge_ended_sessions(conn: Connection) -> dict[str, int]:
    purged = {
        "refresh_tokens": await delete_in_batches(
            conn,
            "refresh_tokens",
            f"session_id IN (SELECT id FROM sessions WHERE {_ENDED_AT} < now() - interval '1 day')",
        ),
        "sessions": await delete_in_batches(
            conn,
            "sessions",
            f"{_ENDED_AT} < now() - make_interval(days => $1)"
            " AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = sessions.id)",
            ENDED_SESSION_DAYS,
        ),
    }
    report(purged)
    return purged


async def purge_forever(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    await purge_every(PURGE_SECONDS, pool, purge_ended_sessions, stop)
