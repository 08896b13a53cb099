"""Versioned SQL migrations, applied at start-up under a PostgreSQL advisory lock.

A service's schema is built from two folders of numbered `.sql` files: the platform tables every
service has (`shared/migrations`: revocations, idempotency records, outbox, seen events), then the
service's own. Each file runs once, in its own transaction, and is recorded in
`<schema>.schema_migrations`. The advisory lock makes two instances starting together take turns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

PLATFORM_MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class MigrationSource:
    """A folder of numbered SQL files, known by a name in the migrations table."""

    name: str
    folder: Path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.sql"))


def _quote_ident(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"not a valid schema name: {name!r}")
    return f'"{name}"'


async def migrate(dsn: str, schema: str, sources: list[MigrationSource]) -> list[str]:
    """Bring `schema` up to date; returns the migrations it applied."""
    applied: list[str] = []
    ident = _quote_ident(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"migrations:{schema}")
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {ident}.schema_migrations ("
                " source text NOT NULL, version text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, version))"
            )
            done = {(r["source"], r["version"]) for r in await conn.fetch(f"SELECT source, version FROM {ident}.schema_migrations")}
            for source in sources:
                for path in source.files():
                    if (source.name, path.stem) in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {ident}")
                        await conn.execute(path.read_text())
                        await conn.execute(
                            "INSERT INTO schema_migrations (source, version) VALUES ($1, $2)",
                            source.name,
                            path.stem,
                        )
                    applied.append(f"{source.name}/{path.stem}")
                    log.info("applied migration", extra={"schema": schema, "migration": f"{source.name}/{path.stem}"})
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"migrations:{schema}")
    finally:
        await conn.close()
    return applied
