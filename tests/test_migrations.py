"""Schema migrations: each file applies once, in order, even when two instances start together."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import uuid4

import asyncpg

from shared.migrations import PLATFORM_MIGRATIONS, MigrationSource, migrate
from tests.support.backends import Backends


async def test_migrations_apply_once_in_order_even_concurrently(backends: Backends, tmp_path: Path) -> None:
    schema = f"mig_{uuid4().hex[:8]}"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (folder / "0002_second.sql").write_text("ALTER TABLE things ADD COLUMN name text; INSERT INTO things VALUES (1, 'one');")
    sources = [MigrationSource("platform", PLATFORM_MIGRATIONS), MigrationSource("svc", folder)]

    first, second = await asyncio.gather(migrate(backends.database_url, schema, sources), migrate(backends.database_url, schema, sources))
    platform = [f"platform/{path.stem}" for path in sorted(PLATFORM_MIGRATIONS.glob("*.sql"))]
    assert sorted([first, second], key=len) == [[], [*platform, "svc/0001_first", "svc/0002_second"]]
    assert await migrate(backends.database_url, schema, sources) == []

    (folder / "0003_third.sql").write_text("INSERT INTO things VALUES (2, 'two');")
    assert await migrate(backends.database_url, schema, sources) == ["svc/0003_third"]

    conn = await asyncpg.connect(backends.database_url)
    try:
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.things") == 2
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == len(platform) + 3
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(backends: Backends, tmp_path: Path) -> None:
    schema = f"mig_{uuid4().hex[:8]}"
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE a (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(backends.database_url)
    try:
        try:
            await migrate(backends.database_url, schema, [MigrationSource("svc", tmp_path)])
        except asyncpg.PostgresError:
            pass
        else:
            raise AssertionError("a broken migration must raise")
        assert await conn.fetchval("SELECT to_regclass($1)", f"{schema}.a") is None
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") == 0
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
