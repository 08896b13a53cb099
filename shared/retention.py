"""What every service forgets, and when: the platform tables that would otherwise grow for ever.

Each row is kept exactly as long as it can still change an answer, then deleted in small batches
(so a purge never holds a long lock or a long transaction on a busy table):

- `processed_commands`: until the caller's token expired (a repeat is refused after that anyway);
- `revoked_sessions`: until every access token of the session has expired. No token is issued in
  a session after it was revoked, so none lives past `revoked_at + ACCESS_TOKEN_TTL_SECONDS` (plus
  the verifiers' leeway); a day more covers a TTL lowered while old tokens were still out;
- `seen_events`: `SEEN_EVENT_DAYS`. A redelivery comes within minutes; what is older is an
  operator replaying a parked event, and every event handler is idempotent on its own (a ban, a
  revocation, a profile insert that does nothing on conflict), so the record only saves work.

`banned_accounts` is never purged: a ban has no end. The audit log's retention is a policy
decision for the operator (OPERATIONS.md), not this module's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from shared.database import TRANSIENT_DATABASE_ERRORS, Connection
from shared.pacing import every
from shared.settings import Settings
from shared.tokens import LEEWAY_SECONDS

log = logging.getLogger(__name__)

#: Rows deleted per statement: small enough to keep each delete's lock short.
BATCH = 1000
SEEN_EVENT_DAYS = 30
#: Added to a revoked session's last possible token expiry before its row goes.
REVOCATION_MARGIN_SECONDS = 86_400


async def delete_in_batches(conn: Connection, table: str, condition: str, *args: object) -> int:
    """Delete the rows of `table` matching `condition`, BATCH at a time; returns how many went.
    `table` and `condition` are this codebase's constants, never input. Rows another transaction
    holds are skipped: the next pass takes them."""
    total = 0
    while True:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT {BATCH} FOR UPDATE SKIP LOCKED))",
            *args,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < BATCH:
            return total


async def purge_platform_tables(conn: Connection, settings: Settings) -> dict[str, int]:
    """One pass over the platform tables of the connection's schema; rows deleted, by table."""
    revoked_for = settings.access_token_ttl_seconds + LEEWAY_SECONDS + REVOCATION_MARGIN_SECONDS
    purged = {
        "processed_commands": await delete_in_batches(conn, "processed_commands", "expires_at < now()"),
        "revoked_sessions": await delete_in_batches(
            conn, "revoked_sessions", "revoked_at < now() - make_interval(secs => $1)", float(revoked_for)
        ),
        "seen_events": await delete_in_batches(conn, "seen_events", "seen_at < now() - make_interval(days => $1)", SEEN_EVENT_DAYS),
    }
    report(purged)
    return purged


def report(purged: dict[str, int]) -> None:
    if any(purged.values()):
        log.info("purged rows past their retention", extra={"rows": {table: n for table, n in purged.items() if n}})


async def purge_every(seconds: float, pool: asyncpg.Pool, purge: Callable[[Connection], Awaitable[object]], stop: asyncio.Event) -> None:
    """Run `purge` on a connection of `pool` now and every `seconds` until `stop`; a database
    outage skips a pass (the next one catches up)."""
    async for _ in every(seconds, stop):
        try:
            async with pool.acquire() as conn:
                await purge(conn)
        except TRANSIENT_DATABASE_ERRORS:
            pass
