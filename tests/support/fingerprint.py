""" "Nothing changed": a fingerprint of every table in the services' schemas.

The tables are listed from information_schema, so a new command's tables are covered without
anyone remembering to add them. The injection suites compare a fingerprint taken before a refused
message with one taken after.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.declarations import SERVICE_NAMES

SCHEMAS = SERVICE_NAMES  # each service owns the schema of its name
#: Tables a refusal is expected to write to: the denial is recorded there.
UNFINGERPRINTED = ("audit_log",)
#: Rows a service deletes on a timer, not in answer to a message: left out of the fingerprint
#: once they are due before the horizon, so housekeeping in the middle of a comparison (in a long
#: run, tokens from early tests expire) is not mistaken for an effect.
HOUSEKEPT = {"processed_commands": "expires_at"}
HORIZON = timedelta(minutes=2)


@dataclass(frozen=True)
class Fingerprint:
    digests: dict[str, str]  # md5 of each table's full contents, by `schema.table`
    horizon: datetime

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and self.digests == other.digests


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def fingerprint(db: asyncpg.Pool, *, like: Fingerprint | None = None) -> Fingerprint:
    """Every table in the services' schemas; `like` reuses an earlier fingerprint's horizon."""
    horizon = like.horizon if like is not None else datetime.now(UTC) + HORIZON
    async with db.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE' AND table_name <> ALL($2::text[])"
            " ORDER BY 1, 2",
            list(SCHEMAS),
            list(UNFINGERPRINTED),
        )
        assert tables, "no tables found in the services' schemas"

        def digest(schema: str, table: str) -> str:
            due = HOUSEKEPT.get(table)
            where = f" WHERE t.{_ident(due)} >= '{horizon.isoformat()}'::timestamptz" if due else ""
            return (
                f"SELECT '{schema}.{table}' AS name, (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f" FROM {_ident(schema)}.{_ident(table)} t{where}) AS digest"
            )

        rows = await conn.fetch(" UNION ALL ".join(digest(r["table_schema"], r["table_name"]) for r in tables))
    return Fingerprint({r["name"]: r["digest"] for r in rows}, horizon)


async def outboxes_empty(db: asyncpg.Pool) -> bool:
    async with db.acquire() as conn:
        return all([await conn.fetchval(f"SELECT count(*) = 0 FROM {schema}.outbox") for schema in SCHEMAS])


def changed_tables(before: Fingerprint, after: Fingerprint) -> list[str]:
    names = before.digests.keys() | after.digests.keys()
    return sorted(name for name in names if before.digests.get(name) != after.digests.get(name))


async def settled_fingerprint(
    db: asyncpg.Pool, *, like: Fingerprint | None = None, quiet: float = 0.2, timeout: float = 15.0
) -> Fingerprint:
    """The fingerprint once setup's events have been relayed and consumed: every outbox empty
    and no table changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = await fingerprint(db, like=like)
    while True:
        await asyncio.sleep(quiet)
        current = await fingerprint(db, like=last)
        if current == last and await outboxes_empty(db):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the database never settled; still changing: {changed_tables(last, current)}")
        last = current
