"""Operator commands of auth_service, run against the database in DATABASE_URL.

    python -m auth_service                                   run the service
    python -m auth_service set-role EMAIL ROLE               make an account user or admin
    python -m auth_service issue-service-token NAME --role ROLE [--ttl SECONDS]
    python -m auth_service revoke-token ID                   end a session by sid or jti
    python -m auth_service rotate-key                        a new signing key; prints its kid last
    python -m auth_service retire-key KID                    withdraw a key at once (after a leak)
    python -m auth_service list-keys                         the keys of the ring and their state

Each command that revokes writes `session.revoked` events to the outbox in the same transaction;
the running auth_service relays them within a second, so every service stops honouring the token.
The key commands change the key ring in the database, which every replica of auth_service reads
four times a second (auth_service/keys.py); with AUTH_SIGNING_KEY_FILE keys are managed outside,
and only list-keys applies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service import repository
from auth_service.issuer import TokenIssuer
from auth_service.keys import PUBLISH_AHEAD_SECONDS, DatabaseKeyStore, FileKeyStore, KeyRing, KeyStore, SigningKey, open_key_ring, to_pem
from auth_service.service import MIGRATIONS, NAME
from auth_service.sessions import close_all_sessions, close_session, open_session
from shared.database import create_pool
from shared.migrations import PLATFORM_MIGRATIONS, MigrationSource, migrate
from shared.roles import ROLES
from shared.settings import ConfigurationError, Settings

EPILOG = """examples:
  python -m auth_service set-role alice@example.com admin
  python -m auth_service issue-service-token reports-job --role user --ttl 3600
  python -m auth_service revoke-token 3f1c9a52-1b0e-4c36-a7f4-9c1f0d6b2e77
  python -m auth_service rotate-key
  python -m auth_service retire-key kF3mXl0sQ2cV5c2nUu3p8Jm8a1YzQm4D0n3k9dQhY1s
"""


class OperatorError(Exception):
    """Something the operator asked for cannot be done; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m auth_service",
        description="Run auth_service, or an operator command against DATABASE_URL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    set_role = sub.add_parser(
        "set-role",
        help="make an account a user or an admin; revokes its sessions",
        epilog="example: python -m auth_service set-role alice@example.com admin",
    )
    set_role.add_argument("email")
    set_role.add_argument("role", choices=ROLES)
    issue = sub.add_parser(
        "issue-service-token",
        help="print an access token for an internal service account",
        epilog="example: python -m auth_service issue-service-token reports-job --role user --ttl 3600",
    )
    issue.add_argument("name", help="the service account's name; created if new")
    issue.add_argument("--role", choices=ROLES, required=True)
    issue.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default ACCESS_TOKEN_TTL_SECONDS)")
    revoke = sub.add_parser(
        "revoke-token",
        help="revoke a session, by session id (sid) or token id (jti)",
        epilog="example: python -m auth_service revoke-token 3f1c9a52-1b0e-4c36-a7f4-9c1f0d6b2e77",
    )
    revoke.add_argument("id")
    sub.add_parser(
        "rotate-key",
        help="make a new signing key current within a second; prints its kid on the last line",
        description="Older keys stay in the JWKS while tokens they signed can still be valid, so nobody is signed out.",
        epilog="example: python -m auth_service rotate-key",
    )
    retire = sub.add_parser(
        "retire-key",
        help="withdraw a signing key at once (after a leak): its tokens stop working within about a second",
        description="Retiring the key that signs now makes a new key current at the same moment (its kid is printed last).",
        epilog="example: python -m auth_service retire-key kF3mXl0sQ2cV5c2nUu3p8Jm8a1YzQm4D0n3k9dQhY1s",
    )
    retire.add_argument("kid")
    sub.add_parser(
        "list-keys",
        help="list the signing keys and whether each signs, is published or is retired",
        epilog="example: python -m auth_service list-keys",
    )
    return parser


async def _with_pool(settings: Settings) -> asyncpg.Pool:
    await migrate(settings.database_url, NAME, [MigrationSource("platform", PLATFORM_MIGRATIONS), MigrationSource(NAME, MIGRATIONS)])
    return await create_pool(settings.database_url, NAME, min_size=1, max_size=2)


async def set_role(settings: Settings, email: str, role: str) -> str:
    pool = await _with_pool(settings)
    try:
        async with pool.acquire() as conn, conn.transaction():
            account = await repository.find_by_email(conn, email.strip().lower())
            if account is None:
                raise OperatorError(f"no account with email {email}")
            await repository.set_role(conn, account["id"], role)
            revoked = await close_all_sessions(conn, account["id"])
    finally:
        await pool.close()
    return f"{email} is now {role}; {revoked} session(s) revoked"


async def issue_service_token(settings: Settings, name: str, role: str, ttl: int | None) -> str:
    ttl = settings.access_token_ttl_seconds if ttl is None else ttl
    if not 1 <= ttl <= 366 * 86_400:
        raise OperatorError("--ttl must be between 1 second and 366 days")
    pool = await _with_pool(settings)
    try:
        keys = await open_key_ring(settings, pool)
        issuer = TokenIssuer(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        async with pool.acquire() as conn, conn.transaction():
            account, role_changed = await repository.upsert_service_account(conn, name, role)
            if role_changed:
                await close_all_sessions(conn, account["id"])
            issued = await open_session(conn, issuer, account, ttl)
            if not settings.auth_signing_key_file:
                # The key stays published until this token expires, however long --ttl is.
                await conn.execute(
                    "UPDATE signing_key_ring SET service_tokens_until = greatest(service_tokens_until, to_timestamp($2)) WHERE kid = $1",
                    issued.kid,
                    issued.expires_at,
                )
    finally:
        await pool.close()
    return issued.token


async def revoke_token(settings: Settings, session_or_token_id: str) -> str:
    pool = await _with_pool(settings)
    try:
        async with pool.acquire() as conn, conn.transaction():
            session = await repository.find_session(conn, session_or_token_id)
            if session is None:
                raise OperatorError(f"no session or token with id {session_or_token_id}")
            await close_session(conn, session["id"], session["account_id"])
    finally:
        await pool.close()
    return f"session {session['id']} revoked"


def _managed_outside(settings: Settings) -> None:
    if settings.auth_signing_key_file:
        raise OperatorError(
            f"signing keys come from AUTH_SIGNING_KEY_FILE ({settings.auth_signing_key_file}) and are managed outside: "
            "rotate by adding a key file to its directory, retire by deleting one (OPERATIONS.md, key rotation)"
        )


#: Serializes changes to the ring (and auth_service's creation of its first key).
_RING_LOCK = "SELECT pg_advisory_xact_lock(hashtext('auth.signing_key_ring'))"


async def _insert_key(conn: asyncpg.Connection | PoolConnectionProxy, delay_seconds: float) -> tuple[str, datetime]:
    key = SigningKey.from_private(Ed25519PrivateKey.generate())
    signs_from = await conn.fetchval(
        "INSERT INTO signing_key_ring (kid, private_pem, signs_from) VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING signs_from",
        key.kid,
        to_pem(key.private),
        delay_seconds,
    )
    return key.kid, signs_from


async def rotate_key(settings: Settings) -> str:
    _managed_outside(settings)
    pool = await _with_pool(settings)
    try:
        await DatabaseKeyStore(pool).ensure_key()  # a ring never started keeps its first key first
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_RING_LOCK)
            # Published at once, signing a moment later: every replica lists it before any signs with it.
            kid, signs_from = await _insert_key(conn, PUBLISH_AHEAD_SECONDS)
    finally:
        await pool.close()
    return f"new signing key; it signs from {signs_from.isoformat()}. Older keys stay published while their tokens can be valid.\n{kid}"


async def retire_key(settings: Settings, kid: str) -> str:
    _managed_outside(settings)
    pool = await _with_pool(settings)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_RING_LOCK)
            row = await conn.fetchrow("SELECT retired_at FROM signing_key_ring WHERE kid = $1", kid)
            if row is None:
                raise OperatorError(f"no signing key with kid {kid} (list-keys shows them)")
            if row["retired_at"] is not None:
                return f"key {kid} was already retired at {row['retired_at'].isoformat()}"
            current = await conn.fetchval(
                "SELECT kid FROM signing_key_ring WHERE retired_at IS NULL AND signs_from <= now() ORDER BY signs_from DESC, kid DESC LIMIT 1"
            )
            await conn.execute("UPDATE signing_key_ring SET retired_at = now() WHERE kid = $1", kid)
            if current != kid:
                return f"key {kid} retired: it leaves the JWKS and its tokens stop working within about a second"
            # The key that signs now: a new one takes over at the same moment (not the previous key,
            # which may be long out of use). Its first tokens reach verifiers before its JWKS does;
            # they fetch the key set again on meeting its kid.
            new_kid, _ = await _insert_key(conn, 0.0)
    finally:
        await pool.close()
    return (
        f"key {kid} retired: it leaves the JWKS and its tokens stop working within about a second; "
        f"every session it signed must sign in again. New signing key, signing now:\n{new_kid}"
    )


async def list_keys(settings: Settings) -> str:
    store: KeyStore
    pool = await _with_pool(settings)
    try:
        if settings.auth_signing_key_file:
            store, lifetime = FileKeyStore(Path(settings.auth_signing_key_file)), None
        else:
            store, lifetime = DatabaseKeyStore(pool), float(settings.access_token_ttl_seconds)
        ring = KeyRing(await store.load(), lifetime)
    finally:
        await pool.close()
    now = time.time()
    current, published = ring.current(now), {k.key.kid for k in ring.published(now)}
    lines = []
    for ring_key in sorted(ring.keys, key=lambda k: (k.signs_from, k.name)):
        if ring_key.retired_at is not None:
            state = f"retired {_when(ring_key.retired_at)}"
        elif ring_key is current:
            state = "signing"
        elif ring_key.key.kid not in published:
            state = "unpublished (no token it signed can still be valid)"
        elif ring_key.signs_from > now:
            state = "published, signs next"
        else:
            state = "published (tokens it signed may still be valid)"
        extra = f", service tokens until {_when(ring_key.service_tokens_until)}" if ring_key.service_tokens_until else ""
        source = "" if ring_key.name == ring_key.key.kid else f" ({ring_key.name})"
        lines.append(f"{ring_key.key.kid}{source}  signs from {_when(ring_key.signs_from)}  {state}{extra}")
    return "\n".join(lines) or "no signing keys yet (auth_service creates the first on start-up)"


def _when(seconds: float) -> str:
    return "always" if seconds <= 0 else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "set-role":
            print(asyncio.run(set_role(settings, args.email, args.role)))
        elif args.command == "issue-service-token":
            print(asyncio.run(issue_service_token(settings, args.name, args.role, args.ttl)))
        elif args.command == "revoke-token":
            print(asyncio.run(revoke_token(settings, args.id)))
        elif args.command == "rotate-key":
            print(asyncio.run(rotate_key(settings)))
        elif args.command == "retire-key":
            print(asyncio.run(retire_key(settings, args.kid)))
        elif args.command == "list-keys":
            print(asyncio.run(list_keys(settings)))
    except (OperatorError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot reach the database in DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    return 0
