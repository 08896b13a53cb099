"""SQL of auth_service: accounts, sessions, refresh tokens, login failures and registration attempts. `$n` parameters only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.errors import Conflict, NotFound

ACCOUNT_COLUMNS = "id, kind, email, service_name, display_name, password_hash, role"
EMAIL_TAKEN = "An account with that email already exists"


async def create_user(conn: asyncpg.Connection | PoolConnectionProxy, email: str, display_name: str, password_hash: str) -> asyncpg.Record:
    try:
        row = await conn.fetchrow(
            f"INSERT INTO accounts (id, kind, email, display_name, password_hash) VALUES ($1, 'user', $2, $3, $4)"
            f" RETURNING {ACCOUNT_COLUMNS}",
            uuid4(),
            email,
            display_name,
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(EMAIL_TAKEN) from None
    assert row is not None
    return row


async def find_by_email(conn: asyncpg.Connection | PoolConnectionProxy, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1", email)


async def get_account(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id)
    if row is None:
        raise NotFound("No such account")
    return row


async def set_password_hash(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID, password_hash: str) -> None:
    await conn.execute("UPDATE accounts SET password_hash = $2 WHERE id = $1", account_id, password_hash)


async def set_role(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID, role: str) -> None:
    await conn.execute("UPDATE accounts SET role = $2 WHERE id = $1", account_id, role)


async def upsert_service_account(conn: asyncpg.Connection | PoolConnectionProxy, name: str, role: str) -> tuple[asyncpg.Record, bool]:
    """The service account called `name` with `role`; True when its role changed."""
    existing = await conn.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE service_name = $1 FOR UPDATE", name)
    if existing is None:
        row = await conn.fetchrow(
            f"INSERT INTO accounts (id, kind, service_name, display_name, role) VALUES ($1, 'service', $2, $2, $3)"
            f" RETURNING {ACCOUNT_COLUMNS}",
            uuid4(),
            name,
            role,
        )
        assert row is not None
        return row, False
    if existing["role"] != role:
        await set_role(conn, existing["id"], role)
        return await get_account(conn, existing["id"]), True
    return existing, False


async def create_session(
    conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID, account_id: UUID, token_id: str, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO sessions (id, account_id, token_id, expires_at) VALUES ($1, $2, $3, $4)",
        session_id,
        account_id,
        token_id,
        expires_at,
    )


async def mark_session_revoked(conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID) -> None:
    await conn.execute("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", session_id)


async def active_sessions(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        # A session whose access token has expired is still active while it can be refreshed.
        "SELECT id FROM sessions WHERE account_id = $1 AND revoked_at IS NULL AND (expires_at > now() OR refresh_until > now()) FOR UPDATE",
        account_id,
    )
    return [r["id"] for r in rows]


#: An open session that can still be used: its access token is unexpired, or it can be refreshed.
_ACTIVE = "revoked_at IS NULL AND (expires_at > now() OR refresh_until > now())"


async def record_session_use(
    conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID, address: str | None, user_agent: str | None
) -> None:
    """Note that the session was just used to sign in or refresh, and from where."""
    await conn.execute(
        "UPDATE sessions SET last_used_at = now(), client_address = $2, user_agent = $3 WHERE id = $1",
        session_id,
        address,
        user_agent,
    )


async def list_active_sessions(conn: asyncpg.Connection | PoolConnectionProxy, account_id: UUID) -> list[asyncpg.Record]:
    """The account's usable sessions, the most recently used first."""
    return await conn.fetch(
        "SELECT id, created_at, coalesce(last_used_at, created_at) AS last_used_at, user_agent, client_address"
        f" FROM sessions WHERE account_id = $1 AND {_ACTIVE} ORDER BY coalesce(last_used_at, created_at) DESC, id",
        account_id,
    )


async def find_session(conn: asyncpg.Connection | PoolConnectionProxy, session_or_token_id: str) -> asyncpg.Record | None:
    """A session by its id (`sid`) or by the id (`jti`) of any access token it was given."""
    try:
        session_id: UUID | None = UUID(session_or_token_id)
    except ValueError:
        session_id = None
    return await conn.fetchrow(
        "SELECT id, account_id, revoked_at FROM sessions WHERE id = $1 OR token_id = $2"
        " OR id = (SELECT session_id FROM refresh_tokens WHERE access_token_id = $2 LIMIT 1)",
        session_id,
        session_or_token_id,
    )


async def create_refresh_token(
    conn: asyncpg.Connection | PoolConnectionProxy,
    token_hash: bytes,
    session_id: UUID,
    account_id: UUID,
    access_token_id: str,
    expires_at: datetime,
) -> None:
    """Keep a new refresh token (its hash), and let its session be refreshed until it expires."""
    await conn.execute(
        "WITH session AS (UPDATE sessions SET refresh_until = greatest(refresh_until, $5) WHERE id = $2)"
        " INSERT INTO refresh_tokens (token_hash, session_id, account_id, access_token_id, expires_at) VALUES ($1, $2, $3, $4, $5)",
        token_hash,
        session_id,
        account_id,
        access_token_id,
        expires_at,
    )


async def find_refresh_token(conn: asyncpg.Connection | PoolConnectionProxy, token_hash: bytes) -> asyncpg.Record | None:
    """A refresh token with what decides whether it may be used: its session's state and age and
    the account's ban, as of now. The token's row is locked, so two refreshes with the same token
    are judged one after the other; the session's row is not (see `lock_open_session`)."""
    return await conn.fetchrow(
        "SELECT r.session_id, r.account_id, r.expires_at, r.used_at, now() AS now,"
        " s.created_at AS session_created_at, s.revoked_at AS session_revoked_at,"
        " EXISTS (SELECT 1 FROM banned_accounts WHERE user_id = r.account_id) AS banned"
        " FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1 FOR UPDATE OF r",
        token_hash,
    )


async def lock_open_session(conn: asyncpg.Connection | PoolConnectionProxy, session_id: UUID) -> bool:
    """Hold the session open until this transaction ends (a revocation waits for it, then also
    ends what it issued); False if it is already closed. An update lock, not a share lock: the
    refresh updates the row, and two refreshes holding share locks would deadlock upgrading them."""
    revoked_at = await conn.fetchval("SELECT revoked_at FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id)
    return revoked_at is None


async def mark_refresh_token_used(
    conn: asyncpg.Connection | PoolConnectionProxy, token_hash: bytes, replaced_by: bytes, session_id: UUID, access_expires_at: datetime
) -> None:
    """The first use of a refresh token (a use within the grace keeps the first time and successor)."""
    await conn.execute(
        "WITH session AS (UPDATE sessions SET expires_at = greatest(expires_at, $4) WHERE id = $3)"
        " UPDATE refresh_tokens SET used_at = coalesce(used_at, now()), replaced_by = coalesce(replaced_by, $2) WHERE token_hash = $1",
        token_hash,
        replaced_by,
        session_id,
        access_expires_at,
    )


#: How many expired failure rows each new failure clears at most: more than the one it adds, so
#: expired rows never pile up, and few enough that a failed login stays cheap.
PURGE_BATCH = 100


async def record_login_failure(
    conn: asyncpg.Connection | PoolConnectionProxy, account_key: str, address: str | None, window: timedelta
) -> None:
    """Count a failure, and clear failures older than the window (the rate limit reads none of
    them). Without that the table grows with every email an outsider makes up; with it, it holds
    at most the failures of one window. `SKIP LOCKED`: concurrent failures clear different rows
    instead of waiting on each other."""
    await conn.execute(
        "WITH expired AS (SELECT id FROM login_failures WHERE failed_at < $3 LIMIT $4 FOR UPDATE SKIP LOCKED),"
        " purged AS (DELETE FROM login_failures WHERE id IN (SELECT id FROM expired))"
        " INSERT INTO login_failures (account_key, address) VALUES ($1, $2)",
        account_key,
        address,
        datetime.now(UTC) - window,
        PURGE_BATCH,
    )


async def clear_login_failures(conn: asyncpg.Connection | PoolConnectionProxy, account_key: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE account_key = $1", account_key)


async def failures_since(
    conn: asyncpg.Connection | PoolConnectionProxy, column: str, value: str, window: timedelta
) -> tuple[int, datetime | None]:
    """How many failures `column` (account_key or address) had in the window, and the oldest one."""
    if column not in ("account_key", "address"):
        raise ValueError(column)
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, min(failed_at) AS oldest FROM login_failures WHERE {column} = $1 AND failed_at > $2",
        value,
        datetime.now(UTC) - window,
    )
    assert row is not None
    return int(row["n"]), row["oldest"]


async def email_taken(conn: asyncpg.Connection | PoolConnectionProxy, email: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE email = $1)", email))


@dataclass(frozen=True, slots=True)
class RegistrationRefused:
    """A registration over its limit: which one, and when its oldest counted attempt leaves the window."""

    limit: Literal["address", "global"]
    oldest: datetime


async def reserve_registration(
    conn: asyncpg.Connection | PoolConnectionProxy, address: str | None, window: timedelta, per_address: int, overall: int
) -> int | RegistrationRefused:
    """Count a registration attempt if `address` and everyone together are under their limits
    within the window; returns the attempt's id, or which limit refused it.

    The table is locked for the count and the insert, so concurrent attempts, from any number of
    auth_service instances, are counted one after the other and none slips past the limit. Each
    reservation also clears up to `PURGE_BATCH` expired rows, so the table holds about one window
    of attempts (at most `overall` of them) whatever an outsider sends."""
    cutoff = datetime.now(UTC) - window
    async with conn.transaction():
        await conn.execute("LOCK TABLE registration_attempts IN EXCLUSIVE MODE")
        row = await conn.fetchrow(
            "WITH expired AS (SELECT id FROM registration_attempts WHERE attempted_at <= $2 LIMIT $3),"
            " purged AS (DELETE FROM registration_attempts WHERE id IN (SELECT id FROM expired))"
            " SELECT count(*) AS total, min(attempted_at) AS oldest,"
            " count(*) FILTER (WHERE address = $1) AS from_address,"
            " min(attempted_at) FILTER (WHERE address = $1) AS oldest_from_address"
            " FROM registration_attempts WHERE attempted_at > $2",
            address,
            cutoff,
            PURGE_BATCH,
        )
        assert row is not None
        if address is not None and row["from_address"] >= per_address:
            return RegistrationRefused("address", row["oldest_from_address"])
        if row["total"] >= overall:
            return RegistrationRefused("global", row["oldest"])
        attempt_id = await conn.fetchval("INSERT INTO registration_attempts (address) VALUES ($1) RETURNING id", address)
    return int(attempt_id)


async def cancel_registration_attempt(conn: asyncpg.Connection | PoolConnectionProxy, attempt_id: int) -> None:
    """Stop counting an attempt that was never given its hash (the hasher was busy)."""
    await conn.execute("DELETE FROM registration_attempts WHERE id = $1", attempt_id)


def account_view(row: asyncpg.Record) -> dict[str, Any]:
    """An account as the API shows it: never the hash."""
    return {
        "id": str(row["id"]),
        "email": row["email"],
        "display_name": row["display_name"],
        "role": row["role"],
    }
