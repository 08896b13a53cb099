"""Operator commands of auth_service, run against the database in DATABASE_URL.

    python -m auth_service                                   run the service
    python -m auth_service set-role EMAIL ROLE               make an account user or admin
    python -m auth_service issue-service-token NAME --role ROLE [--ttl SECONDS]
    python -m auth_service revoke-token ID                   end a session by sid or jti

Each command that revokes writes `session.revoked` events to the outbox in the same transaction;
the running auth_service relays them within a second, so every service stops honouring the token.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from auth_service import repository
from auth_service.issuer import TokenIssuer
from auth_service.keys import load_signing_key
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
        key = await load_signing_key(settings, pool)
        issuer = TokenIssuer(key, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        async with pool.acquire() as conn, conn.transaction():
            account, role_changed = await repository.upsert_service_account(conn, name, role)
            if role_changed:
                await close_all_sessions(conn, account["id"])
            issued = await open_session(conn, issuer, account, ttl)
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
    except (OperatorError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot reach the database in DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    return 0
