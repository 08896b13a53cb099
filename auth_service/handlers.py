"""auth_service's command and event handlers: register, login, refresh, logout, get-me, list-sessions,
end-session, user.banned.

Handlers are application code: a validated payload, the verified caller (or None for public
commands) and a connection inside the command's transaction. The runner has already checked the
token, the session, the ban and the policy before any of these run.

Every hash goes through the admission (auth_service/admission.py): logins first, registrations
bounded, a fast 503 when busy. Rate-limit rows (failed logins, registration attempts) are written
on a small pool of their own: they must outlive the command's transaction (a refusal rolls it
back), and taking a second connection from the command pool could wait forever once every
connection of it is held by a command waiting for a second one. The revocation of a session whose
refresh token was reused is written there too, for the same reason: the answer is a 401, the
command's transaction rolls back, and the revocation must commit all the same.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from auth_service import repository
from auth_service.admission import HashAdmission, Lane
from auth_service.common_passwords import TOO_COMMON, is_common
from auth_service.issuer import TokenIssuer
from auth_service.passwords import hash_password, needs_rehash, verify_password
from auth_service.refresh_tokens import Verdict, judge, token_hash
from auth_service.sessions import close_all_sessions, close_session, open_refreshable_session, record_use, refresh_session, session_view
from shared.commands import EndSession, GetMe, ListSessions, Login, Logout, Refresh, Register
from shared.envelope import current_message
from shared.errors import Conflict, Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized, Unprocessable
from shared.events import UserBanned
from shared.outbox import add_event
from shared.revocation import on_session_revoked, record_ban
from shared.routes import CommandHandler, EventHandler
from shared.settings import Settings
from shared.tokens import Caller

log = logging.getLogger(__name__)

WRONG_CREDENTIALS = "Wrong email or password"
TOO_MANY_FROM_ADDRESS = "Too many accounts registered from your address; try again later"
TOO_MANY_OVERALL = "Too many accounts are being registered right now; try again later"
#: Why a refresh is refused (401); the token's holder learns no more than that it is not good.
REFRESH_REFUSED = {
    Verdict.UNKNOWN: "That refresh token is not valid; sign in again",
    Verdict.EXPIRED: "That refresh token has expired; sign in again",
    Verdict.CLOSED: "That session has ended; sign in again",
    Verdict.REUSED: "That refresh token was already used; the session has been ended, sign in again",
}
#: The `account_key` a failed refresh is counted under in login_failures: no email looks like it,
#: and only the per-address limit reads refresh failures (a guessed token names no account).
REFRESH_FAILURE_KEY = "(refresh token)"


def registration_address(address: str) -> str:
    """The key an address's registrations are counted under: an IPv6 address by its /64, the
    block one subscriber is usually given (counting each of its 2^64 addresses alone would make
    the limit no limit), an IPv4-mapped one as plain IPv4, anything else as it came."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AuthHandlers:
    """Handlers bound to what they need: the rate-limit pool, the hashing admission, issuer and settings."""

    def __init__(self, settings: Settings, limits_pool: asyncpg.Pool, issuer: TokenIssuer, hashing: HashAdmission) -> None:
        self._settings = settings
        self._limits_pool = limits_pool
        self._issuer = issuer
        self._hashing = hashing

    def commands(self) -> dict[str, CommandHandler]:
        return {
            "register": self.register,
            "login": self.login,
            "refresh": self.refresh,
            "logout": self.logout,
            "get-me": self.get_me,
            "list-sessions": self.list_sessions,
            "end-session": self.end_session,
        }

    def events(self) -> dict[str, EventHandler]:
        return {"session.revoked": on_session_revoked, "user.banned": self.on_user_banned}

    async def register(self, cmd: Register, _caller: None, conn: asyncpg.Connection) -> dict[str, Any]:
        # Cheapest refusals first: each step costs more than the one before, the hash most of all.
        if is_common(cmd.password):
            raise Unprocessable(TOO_COMMON)
        # A place in the hashing queue first: when it is full the answer is a 503 at once, before
        # any database work and before the attempt counts against the caller's address.
        with self._hashing.place(Lane.REGISTRATION) as place:
            attempt = await self._reserve_registration()
            if await repository.email_taken(conn, cmd.email):
                raise Conflict(repository.EMAIL_TAKEN)
            try:
                password_hash = await place.run(lambda: hash_password(cmd.password))
            except ServiceUnavailable:
                async with self._limits_pool.acquire() as limits:
                    await repository.cancel_registration_attempt(limits, attempt)
                raise
        account = await repository.create_user(conn, cmd.email, cmd.display_name, password_hash)
        await add_event(conn, "user.registered", {"user_id": str(account["id"]), "display_name": account["display_name"]})
        return repository.account_view(account)

    async def login(self, cmd: Login, _caller: None, conn: asyncpg.Connection) -> dict[str, Any]:
        ctx = current_message()
        address = ctx.client_address if ctx else None
        # An unknown email takes the same place, lane and hash as a known one: neither the
        # answer nor its timing may tell which emails have accounts.
        with self._hashing.place(Lane.LOGIN) as place:
            await self._check_rate_limit(conn, cmd.email, address)
            account = await repository.find_by_email(conn, cmd.email)
            valid = await place.run(lambda: verify_password(account["password_hash"] if account else None, cmd.password))
        if account is None or not valid:
            await self._record_failure(cmd.email, address)
            raise Unauthorized(WRONG_CREDENTIALS)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM banned_accounts WHERE user_id = $1)", account["id"]):
            raise Forbidden("Your account is banned")
        if needs_rehash(account["password_hash"]):
            # An upgrade of the hash's parameters, not needed for this login: when the hashing
            # threads are busy it waits for a later one rather than turn this one away.
            with contextlib.suppress(ServiceUnavailable):
                new_hash = await self._hashing.run(Lane.LOGIN, lambda: hash_password(cmd.password))
                await repository.set_password_hash(conn, account["id"], new_hash)
        await repository.clear_login_failures(conn, cmd.email)
        pair = await open_refreshable_session(conn, self._issuer, account, self._settings)
        await record_use(conn, pair)
        return pair.response()

    async def refresh(self, cmd: Refresh, _caller: None, conn: asyncpg.Connection) -> dict[str, Any]:
        """A new pair in the same session for a refresh token that is good, used once."""
        ctx = current_message()
        address = ctx.client_address if ctx else None
        # The login limit per address covers refresh: failed refreshes count with failed logins.
        await self._check_rate_limit(conn, None, address)
        used = token_hash(cmd.refresh_token)
        row = await repository.find_refresh_token(conn, used)
        verdict = judge(
            row, grace_seconds=self._settings.refresh_reuse_grace_seconds, session_max_age_seconds=self._settings.session_max_age_seconds
        )
        if verdict.refreshes:
            assert row is not None
            # The session stays open until this commits: a revocation that comes in meanwhile
            # waits, then ends the pair issued here too.
            if await repository.lock_open_session(conn, row["session_id"]):
                account = await repository.get_account(conn, row["account_id"])
                pair = await refresh_session(
                    conn, self._issuer, account, row["session_id"], row["session_created_at"], used, self._settings
                )
                await record_use(conn, pair)
                return pair.response()
            verdict = Verdict.CLOSED
        if verdict is Verdict.BANNED:
            raise Forbidden("Your account is banned")
        if verdict is Verdict.REUSED:
            assert row is not None
            await self._revoke_reused(row["session_id"], row["account_id"])
        await self._record_failure(REFRESH_FAILURE_KEY, address)
        raise Unauthorized(REFRESH_REFUSED[verdict])

    async def logout(self, _cmd: Logout, caller: Caller, conn: asyncpg.Connection) -> None:
        await close_session(conn, caller.session_id, caller.subject)

    async def get_me(self, _cmd: GetMe, caller: Caller, conn: asyncpg.Connection) -> dict[str, Any]:
        return repository.account_view(await repository.get_account(conn, caller.subject))

    async def list_sessions(self, _cmd: ListSessions, caller: Caller, conn: asyncpg.Connection) -> dict[str, Any]:
        rows = await repository.list_active_sessions(conn, caller.subject)
        return {"items": [session_view(row, caller.session_id) for row in rows]}

    async def end_session(self, cmd: EndSession, caller: Caller, conn: asyncpg.Connection) -> None:
        """The policy has found the session and checked it is the caller's (the row is locked);
        the caller's own current one may be ended too, like a logout."""
        await close_session(conn, cmd.session_id, caller.subject)

    async def on_user_banned(self, event: UserBanned, conn: asyncpg.Connection) -> None:
        """A ban ends every session of the account and refuses its future logins."""
        await record_ban(conn, event.user_id)
        await close_all_sessions(conn, event.user_id)

    async def _revoke_reused(self, session_id: UUID, account_id: UUID) -> None:
        """End the session of a reused refresh token, everywhere (through `session.revoked`).

        On the limits pool, in a transaction of its own: the 401 that follows rolls the command's
        transaction back, and the revocation must hold all the same. It touches the session row,
        never the token's row this command holds locked, so it cannot wait on its own command."""
        async with self._limits_pool.acquire() as limits, limits.transaction():
            await close_session(limits, session_id, account_id)
        # A warning, not an error: it is the system working, but an operator may want to know
        # that a token leaked (or that a client refreshes from two places past the grace).
        log.warning(
            "a used refresh token was presented again; its session is revoked",
            extra={"session_id": str(session_id), "user_id": str(account_id)},
        )

    async def _check_rate_limit(self, conn: asyncpg.Connection, email: str | None, address: str | None) -> None:
        window = timedelta(seconds=self._settings.login_window_seconds)
        limits = []
        if email is not None:
            limits.append(("account_key", email, self._settings.login_max_failures_per_account))
        if address:
            limits.append(("address", address, self._settings.login_max_failures_per_address))
        for column, value, limit in limits:
            count, oldest = await repository.failures_since(conn, column, value, window)
            if count >= limit and oldest is not None:
                wait = (oldest + window - datetime.now(UTC)).total_seconds()
                raise TooManyRequests("Too many failed sign-in attempts; try again later", retry_after=max(1, math.ceil(wait)))

    async def _reserve_registration(self) -> int:
        """Count this attempt against the caller's address and everyone's, or refuse it with 429.

        Every attempt that gets this far counts, a taken email's too, so the 409 cannot be used
        to test emails faster than the limit; one refused as busy is given back."""
        ctx = current_message()
        address = registration_address(ctx.client_address) if ctx and ctx.client_address else None
        window = timedelta(seconds=self._settings.register_window_seconds)
        async with self._limits_pool.acquire() as conn:
            reserved = await repository.reserve_registration(
                conn, address, window, self._settings.register_max_per_address, self._settings.register_max_global
            )
        if isinstance(reserved, int):
            return reserved
        wait = (reserved.oldest + window - datetime.now(UTC)).total_seconds()
        detail = TOO_MANY_FROM_ADDRESS if reserved.limit == "address" else TOO_MANY_OVERALL
        raise TooManyRequests(detail, retry_after=max(1, math.ceil(wait)))

    async def _record_failure(self, email: str, address: str | None) -> None:
        # Outside the command's transaction: it rolls back with the 401 it raises, and the
        # failure must still count.
        async with self._limits_pool.acquire() as conn:
            await repository.record_login_failure(conn, email, address, timedelta(seconds=self._settings.login_window_seconds))
