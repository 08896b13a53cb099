"""The audit trail: every authorization decision, in the deciding service's own table and log.

A decision is `allowed`, `denied` or `replayed` (a repeated message_id answered from its stored
reply). An allowed decision is written in the command's own transaction, so the trail and the
effect commit together; a denial is written on its own, since the command's transaction rolls
back. Commands under the PUBLIC policy make no decision and are not audited. Admins read the trail
with the `list-audit.<service>` command (`GET /audit?service=…` at the gateway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import asyncpg

from shared.commands import RESOURCES, ListAudit, audit_command_name
from shared.database import TRANSIENT_DATABASE_ERRORS, Connection
from shared.errors import Unprocessable
from shared.routes import CommandRoute, route
from shared.tokens import Caller

log = logging.getLogger("audit")

DecisionKind = Literal["allowed", "denied", "replayed"]


@dataclass(frozen=True, slots=True)
class Decision:
    decision: DecisionKind
    command: str
    caller: str
    caller_kind: str
    resource: str | None
    reason: str
    message_id: str | None
    request_id: str | None

    def followed_by(self, note: str) -> Decision:
        return replace(self, reason=f"{self.reason}; then {note}")


def decide(
    decision: DecisionKind,
    command_name: str,
    caller: Caller | None,
    payload: Any,
    reason: str,
    *,
    message_id: str | None,
    request_id: str | None,
) -> Decision:
    """Build a decision and write its log line."""
    made = Decision(
        decision=decision,
        command=command_name,
        caller=caller.describe() if caller else "anonymous",
        caller_kind=caller.kind if caller else "anonymous",
        resource=resource_of(payload),
        reason=reason,
        message_id=message_id,
        request_id=request_id,
    )
    log.info(
        "authorization decision",
        extra={
            "decision": made.decision,
            "caller": made.caller,
            "resource": made.resource,
            "reason": made.reason,
            "message_id": made.message_id,
        },
    )
    return made


def resource_of(payload: Any) -> str | None:
    """What the command acts on, as `post:<id>` or `user:<id>`, when its payload names it."""
    for resource in RESOURCES:
        value = getattr(payload, resource.id_field, None)
        if value is not None:
            return f"{resource.name}:{value}"
    return None


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; an audit row must never fail to be written for it."""
    return None if value is None else value.replace("\x00", "\ufffd")


COLUMNS = "decision, command, caller, caller_kind, resource, reason, message_id, request_id"


def row(decision: Decision) -> tuple[Any, ...]:
    """The decision's values, in the order of `COLUMNS`."""
    return (
        decision.decision,
        _text(decision.command),
        decision.caller,
        decision.caller_kind,
        _text(decision.resource),
        _text(decision.reason[:1000]),
        _text(decision.message_id),
        _text(decision.request_id),
    )


async def record(conn: Connection, decision: Decision) -> None:
    await conn.execute(f"INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *row(decision))


async def record_alone(pool: asyncpg.Pool, decision: Decision) -> None:
    """Write a decision outside any command transaction (denials). The log line already exists,
    so a database outage here loses the row but never the record of the decision."""
    try:
        async with pool.acquire() as conn:
            await record(conn, decision)
    except TRANSIENT_DATABASE_ERRORS as exc:
        log.warning("could not write an audit row", extra={"error": str(exc) or type(exc).__name__})


#: The largest `bigserial` id PostgreSQL holds: a larger number was never a row id (and binding it
#: as `bigint` fails in the driver).
MAX_ROW_ID = 2**63 - 1
_ASCII_DIGITS = frozenset("0123456789")


def audit_cursor(cursor: str) -> int:
    """The row id an audit cursor names; 422 for anything this service did not give out.
    `str.isdigit` is no check: it is True for `²` and other digits `int` cannot read."""
    if not cursor or not _ASCII_DIGITS.issuperset(cursor) or int(cursor) > MAX_ROW_ID:
        raise Unprocessable("cursor: is not a cursor this service gave out")
    return int(cursor)


async def list_audit(cmd: ListAudit, _caller: Caller, conn: Connection) -> dict[str, Any]:
    """A page of the audit trail, newest first."""
    before = None if cmd.cursor is None else audit_cursor(cmd.cursor)
    rows = await conn.fetch(
        "SELECT id, occurred_at, decision, command, caller, caller_kind, resource, reason, message_id, request_id"
        " FROM audit_log WHERE ($1::text IS NULL OR decision = $1) AND ($2::bigint IS NULL OR id < $2)"
        " ORDER BY id DESC LIMIT $3",
        cmd.decision,
        before,
        cmd.limit + 1,
    )
    page = rows[: cmd.limit]
    items = [{**dict(r), "occurred_at": r["occurred_at"].isoformat()} for r in page]
    return {"items": items, "next_cursor": str(page[-1]["id"]) if len(rows) > cmd.limit else None}


def audit_route(service: str) -> CommandRoute:
    """Every service serves its own trail, to admins only (declared in shared/commands.py)."""
    return route(audit_command_name(service), list_audit)
