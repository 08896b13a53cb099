"""Execute-once for commands: the same `message_id` from the same caller runs one time.

`claim` is the first statement of a command's transaction. It inserts a marker for
(subject, message_id); if a marker is already there the earlier transaction has committed (an
INSERT waits for a concurrent one holding the same key), and its stored reply is returned instead
of running the command again. The reply is saved in the same transaction as the effect (by the
command's closing statement, shared/bookkeeping.py), so the two can never disagree. Records live until the caller's token expires, after which a repeat is
refused by token verification anyway.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shared.database import Connection
from shared.errors import Conflict

#: What an Idempotency-Key may be: 1 to 200 visible ASCII characters.
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,200}$"

#: The subject idempotency records use for commands without a token (register).
ANONYMOUS = UUID(int=0)

#: What `claim` returns when the message is new: it has no reply yet.
UNSET: Any = object()

#: Insert the marker of (subject $1, message_id $2) for command $3, kept until $4; no row if taken.
CLAIM_SQL = (
    "INSERT INTO processed_commands (subject, message_id, command, expires_at)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true"
)


def anonymous_key(message_id: str, body: bytes) -> str:
    """An anonymous caller's key includes the body, so strangers re-using a message_id
    can never read each other's replies."""
    return f"{message_id}:{hashlib.sha256(body).hexdigest()}"


async def claim(conn: Connection, subject: UUID, message_id: str, command: str, expires_at: int) -> Any:
    """Claim the message for this transaction; returns the stored reply if it already ran, else UNSET."""
    inserted = await conn.fetchval(
        CLAIM_SQL,
        subject,
        message_id,
        command,
        datetime.fromtimestamp(expires_at, UTC),
    )
    if inserted:
        return UNSET
    return await stored_reply(conn, subject, message_id, command)


async def stored_reply(conn: Connection, subject: UUID, message_id: str, command: str) -> Any:
    """The reply of the command that already claimed (subject, message_id); 409 if it was another command."""
    row = await conn.fetchrow(
        "SELECT command, reply FROM processed_commands WHERE subject = $1 AND message_id = $2",
        subject,
        message_id,
    )
    assert row is not None
    if row["command"] != command:
        raise Conflict("This message id was already used for a different command")
    return row["reply"]


def is_new(claimed: Any) -> bool:
    return claimed is UNSET


async def purge_expired(conn: Connection) -> int:
    """Drop records whose token has expired; returns how many went."""
    status = await conn.execute("DELETE FROM processed_commands WHERE expires_at < now()")
    return int(status.split()[-1])
