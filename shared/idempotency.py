"""Execute-once for commands: the same `message_id` from the same caller runs one time.

`claim` is the first statement of a command's transaction. It inserts a marker for
(subject, message_id) with the payload's fingerprint; if a marker is already there the earlier
transaction has committed (an INSERT waits for a concurrent one holding the same key), and its
stored reply is returned instead of running the command again, provided the repeat carries the
same command and the same payload (another command is 409, another payload 422: a client that
re-uses a key for a different request has a bug, and answering it with the first result would
hide it). The reply is saved in the same transaction as the effect (by the command's closing
statement, shared/bookkeeping.py), so the two can never disagree. Records live until the caller's
token expires, after which a repeat is refused by token verification anyway.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from shared.database import Connection
from shared.declarations import secret_fields
from shared.errors import Conflict, Unprocessable

#: What an Idempotency-Key may be: 1 to 200 visible ASCII characters.
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,200}$"

#: The subject idempotency records use for commands without a token (register).
ANONYMOUS = UUID(int=0)

#: What `claim` returns when the message is new: it has no reply yet.
UNSET: Any = object()

#: Insert the marker of (subject $1, message_id $2) for command $3, kept until $4, of the payload
#: whose fingerprint is $5; no row if taken.
CLAIM_SQL = (
    "INSERT INTO processed_commands (subject, message_id, command, expires_at, fingerprint)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true"
)


def fingerprint(payload: BaseModel) -> bytes:
    """The payload as validated, not as sent: key order, spacing and escapes a client's JSON
    library chooses do not make a retry a different request. Secret fields are left out: a fast
    unsalted hash of a password is a password at rest (a repeat that differs only in its
    password is the same request as far as replay goes)."""
    document = payload.model_dump_json(exclude=set(secret_fields(type(payload))))
    return hashlib.sha256(document.encode()).digest()


def anonymous_key(message_id: str, payload_print: bytes) -> str:
    """An anonymous caller's key includes the payload's fingerprint, so strangers re-using a
    message_id can never read each other's replies."""
    return f"{message_id}:{payload_print.hex()}"


async def claim(conn: Connection, subject: UUID, message_id: str, command: str, expires_at: int, payload_print: bytes) -> Any:
    """Claim the message for this transaction; returns the stored reply if it already ran, else UNSET."""
    inserted = await conn.fetchval(
        CLAIM_SQL,
        subject,
        message_id,
        command,
        datetime.fromtimestamp(expires_at, UTC),
        payload_print,
    )
    if inserted:
        return UNSET
    return await stored_reply(conn, subject, message_id, command, payload_print)


async def stored_reply(conn: Connection, subject: UUID, message_id: str, command: str, payload_print: bytes) -> Any:
    """The reply of the command that already claimed (subject, message_id): 409 if it was another
    command, 422 if it carried another payload."""
    row = await conn.fetchrow(
        "SELECT command, fingerprint, reply FROM processed_commands WHERE subject = $1 AND message_id = $2",
        subject,
        message_id,
    )
    assert row is not None
    if row["command"] != command:
        raise Conflict("This message id (Idempotency-Key) was already used for a different command")
    # A record from before fingerprints were kept has none: it replays as it always did.
    if row["fingerprint"] is not None and row["fingerprint"] != payload_print:
        raise Unprocessable("This message id (Idempotency-Key) was already used with a different payload; use a new one for a new request")
    return row["reply"]


def is_new(claimed: Any) -> bool:
    return claimed is UNSET
