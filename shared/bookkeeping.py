"""A command transaction's bookkeeping, in one statement before the handler and one after.

Around every command the runner must check the caller's session and ban, claim the message_id,
and, once the handler is done, save the reply, write the audit row and the handler's events. Each
was a round trip of its own; they are now two, built here as data-modifying CTEs:

    opening:  claim the message_id  +  is the session revoked?  +  is the account banned?
              (+ lock the resource's row and read its owner, for an owner policy)
    closing:  save the reply  +  the audit row  +  the outbox rows

Both run inside the command's transaction, so what they write commits or rolls back with its effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

from shared import audit, idempotency
from shared.authorization import Resource
from shared.database import Connection, Params
from shared.outbox import NOTIFY_SQL, OutboxEvent, insert_events_sql
from shared.revocation import caller_state_sql, check_caller, refuse
from shared.tokens import Caller


class Key(NamedTuple):
    """Whose message, until when it is remembered (a Unix time), and what it carried."""

    subject: UUID
    message_id: str
    expires_at: int
    fingerprint: bytes


class Opened(NamedTuple):
    """What the opening statement found."""

    #: The stored reply of an earlier run of the same message, or `idempotency.UNSET`.
    stored: Any
    #: Whether `owner` was looked up (the command's policy owns a resource, and it is new).
    owner_known: bool = False
    #: The resource's owner, its row locked until the transaction ends; None if there is no row.
    owner: UUID | None = None


class Owned(NamedTuple):
    """The resource whose owner the opening statement looks up, and the id the payload names."""

    resource: Resource
    id: UUID


async def open_command(conn: Connection, caller: Caller | None, key: Key | None, command: str, owned: Owned | None = None) -> Opened:
    """Check the caller, claim the message and, for an owner policy, lock the resource's row and
    read its owner: one statement. Returns the stored reply of an earlier run of the same message,
    or `idempotency.UNSET` when this one is new (or has no key), and the owner if it was read."""
    if caller is None:
        if key is None:
            return Opened(idempotency.UNSET)
        return Opened(await idempotency.claim(conn, key.subject, key.message_id, command, key.expires_at, key.fingerprint))
    if key is None:
        if owned is None:
            await check_caller(conn, caller)
            return Opened(idempotency.UNSET)
        row = await conn.fetchrow(
            f"WITH owned AS ({owned.resource.owner_sql('$3')}) SELECT {caller_state_sql('$1', '$2')}, (SELECT owner FROM owned) AS owner",
            caller.session_id,
            caller.subject,
            owned.id,
        )
        assert row is not None
        refuse(revoked=row["revoked"], banned=row["banned"])
        return Opened(idempotency.UNSET, True, row["owner"])
    subject, message_id, expires_at, payload_print = key
    # The claim waits for a concurrent transaction holding the same key; if that one committed,
    # nothing is inserted and the stored reply is read below, in a statement of its own (this
    # statement's snapshot predates that commit). The owner's row is locked only once the claim is
    # in (`owned` reads `claimed`): two deliveries of one message never hold the row and the key
    # in opposite orders, and a repeat locks nothing.
    lookup = f", owned AS ({owned.resource.owner_sql('$8', provided='EXISTS (SELECT 1 FROM claimed)')})" if owned else ""
    row = await conn.fetchrow(
        f"WITH claimed AS ({idempotency.CLAIM_SQL}){lookup}"
        f" SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, {caller_state_sql('$6', '$7')}"
        + (", (SELECT owner FROM owned) AS owner" if owned else ""),
        subject,
        message_id,
        command,
        datetime.fromtimestamp(expires_at, UTC),
        payload_print,
        caller.session_id,
        caller.subject,
        *((owned.id,) if owned else ()),
    )
    assert row is not None
    # A refused caller's claim rolls back with the refusal.
    refuse(revoked=row["revoked"], banned=row["banned"])
    if row["claimed"]:
        return Opened(idempotency.UNSET, owned is not None, row["owner"] if owned else None)
    return Opened(await idempotency.stored_reply(conn, subject, message_id, command, payload_print))


async def close_command(
    conn: Connection,
    key: Key | None,
    reply: Any,
    decision: audit.Decision | None,
    events: Sequence[OutboxEvent],
    *,
    notify: bool,
) -> None:
    """Save the reply, write the audit row and the events: one statement, whatever is needed.

    `notify` wakes the schema's relays at commit; a runner with a relay of its own wakes it
    directly, which spares PostgreSQL a notification and every listener a wake-up per command.
    """
    params = Params()
    parts = []
    if key is not None:
        parts.append(
            f"saved AS (UPDATE processed_commands SET reply = {params(reply)}"
            f" WHERE subject = {params(key.subject)} AND message_id = {params(key.message_id)})"
        )
    if decision is not None:
        values = ", ".join(params(value) for value in audit.row(decision))
        parts.append(f"audited AS (INSERT INTO audit_log ({audit.COLUMNS}) VALUES ({values}))")
    final = "SELECT 1"
    if events:
        parts.append(f"written AS ({insert_events_sql(list(events), params)})")
        if notify:
            final = NOTIFY_SQL
    if parts:
        await conn.execute(f"WITH {', '.join(parts)} {final}", *params.values)
