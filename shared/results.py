"""What commands answer: the `result` of each successful reply, as pydantic models.

They are the shape of the broker replies (AsyncAPI) and of the HTTP answers (OpenAPI) alike, and
the tests check real answers against them. A command's declaration (shared/commands.py) names its
result model here.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel

from shared.roles import Role


class Account(BaseModel):
    id: UUID
    email: str | None
    display_name: str
    role: Role


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int


class Post(BaseModel):
    id: UUID
    author_id: UUID
    title: str
    body: str
    created_at: str


class PostPage(BaseModel):
    items: list[Post]
    next_cursor: str | None


class UserProfile(BaseModel):
    id: UUID
    display_name: str
    banned: bool


class AuditEntry(BaseModel):
    id: int
    occurred_at: str
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
