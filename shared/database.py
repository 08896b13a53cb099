"""PostgreSQL access: the pool every service uses, pinned to the service's own schema.

Each service lives in one schema (`auth`, `users`, `posts`) of the database `DATABASE_URL` names.
The pool sets `search_path` to that schema alone, so a service's SQL cannot touch another's
tables even by accident, and two services can share a database without sharing state.

`DATABASE_URL` may name a primary and its standbys (shared/database_url.py): every connection
goes to the host that takes writes, so after a failover the pool's new connections find the
promoted standby by themselves. A connection that still reaches a server taking no writes (a
single-host URL whose name still points at the old primary, now a standby) gets
`read_only_sql_transaction`, which is an outage to wait out like a lost connection
(`TRANSIENT_DATABASE_ERRORS`); `discard_connections` makes the pool reconnect.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias

import asyncpg
from asyncpg.connect_utils import SessionAttribute
from asyncpg.pool import PoolConnectionProxy

from shared import jsoncodec
from shared.database_url import SESSION_ATTRIBUTES_VARIABLE, read_only_session_attrs

#: What a service's code gets to run statements on: a connection, or a pool's proxy for one.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

#: Errors that mean "the database is not reachable right now", not "this command is wrong".
TRANSIENT_DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    # What asyncpg raises when a connection dies in the middle of an operation (seen when the
    # server shuts down under load): the connection's state machine, not the command, is broken.
    asyncpg.InternalClientError,
    # A write that reached a server in recovery: the connection outlived its primary's role (or
    # the URL's name still points at the old primary). The next connection finds the new one.
    asyncpg.ReadOnlySQLTransactionError,
)


def lost_the_primary(exc: BaseException) -> bool:
    """Whether `exc` says the connection is on a server that takes no writes (any more)."""
    return isinstance(exc, asyncpg.ReadOnlySQLTransactionError)


async def discard_connections(pool: asyncpg.Pool) -> None:
    """Have every connection of `pool` replaced on its next acquire, so that the pool connects
    afresh and `target_session_attrs` picks the primary again."""
    await pool.expire_connections()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=jsoncodec.dumps_text, decoder=jsoncodec.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) costs a
    round trip on every release, which is every message. Pool connections never change session
    state: LISTEN and advisory locks run on connections of their own (outbox relay, migrations),
    and the only SET is `SET LOCAL` inside a transaction. asyncpg still rolls back a transaction
    left open before calling this.
    """


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, read_only: bool = False) -> asyncpg.Pool:
    """A pool whose connections see only `schema`. With `read_only`, PostgreSQL refuses any
    write on them, in a transaction or out of one."""
    settings = {"search_path": schema, "application_name": f"{schema}_service"}
    attrs: SessionAttribute | None = None  # the URL's
    if read_only:
        settings["default_transaction_read_only"] = "on"
        # That setting would make asyncpg's read-write check refuse every host, the primary
        # included (shared/database_url.py).
        override = read_only_session_attrs(dsn, os.environ.get(SESSION_ATTRIBUTES_VARIABLE))
        attrs = SessionAttribute(override) if override else None
    pool = await asyncpg.create_pool(
        dsn,
        target_session_attrs=attrs,
        min_size=min_size,
        max_size=max_size,
        server_settings=settings,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


class Params:
    """Numbers the `$n` parameters of a statement built in pieces: `params(value)` keeps the value
    and returns its placeholder; `params.values` goes to `execute(sql, *params.values)`."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"
