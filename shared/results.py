"""What commands answer: the `result` of each successful reply, as pydantic models.

They are the shape of the broker replies (AsyncAPI) and of the HTTP answers (OpenAPI) alike, and
the tests check real answers against them. A command's declaration (shared/commands.py) names its
result model here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field

from shared.roles import Role


def _timestamp(value: str) -> str:
    # Kept as the text the service sent (tests compare it as such), but it must be what the
    # schema promises: an RFC 3339 date-time, offset included.
    if datetime.fromisoformat(value).utcoffset() is None:
        raise ValueError("must carry its UTC offset")
    return value


#: An instant as the services write it (`datetime.isoformat()` of an aware time, RFC 3339);
#: `format: date-time` in OpenAPI and AsyncAPI, so generated clients can parse it as one.
Timestamp = Annotated[str, AfterValidator(_timestamp), Field(json_schema_extra={"format": "date-time"})]


class Account(BaseModel):
    id: UUID
    email: str | None
    display_name: str
    role: Role


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    #: Seconds the access token is valid for.
    expires_in: int
    #: Opaque, single use: `refresh` trades it for a new pair in the same session.
    refresh_token: str
    #: Seconds the refresh token stays valid unused (less near the session's absolute age).
    refresh_expires_in: int


class SessionInfo(BaseModel):
    """One of the caller's open sessions, as list-sessions shows it."""

    id: UUID
    created_at: Timestamp
    #: The last sign-in or refresh (not every command: that would be a write on each).
    last_used_at: Timestamp
    #: The client's User-Agent and address as the gateway saw them at that last use; `broker:<user>`
    #: for an address when the command did not come through the gateway; null when unknown.
    user_agent: str | None
    address: str | None
    #: Whether this is the session of the token that asked.
    current: bool


class SessionList(BaseModel):
    items: list[SessionInfo]


class Post(BaseModel):
    id: UUID
    author_id: UUID
    title: str
    body: str
    created_at: Timestamp


class PostPage(BaseModel):
    items: list[Post]
    next_cursor: str | None


class UserProfile(BaseModel):
    id: UUID
    display_name: str
    banned: bool


class AuditEntry(BaseModel):
    id: int
    occurred_at: Timestamp
    decision: Literal["allowed", "denied", "replayed"]
    command: str
    caller: str
    caller_kind: Literal["user", "service", "anonymous"]
    resource: str | None
    reason: str
    message_id: str | None
    request_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None
