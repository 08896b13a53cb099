"""Response bodies of the HTTP API, as pydantic models: they document the API (OpenAPI) and the
tests check real responses against them."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from shared.commands import text


class Account(BaseModel):
    id: UUID
    email: str | None
    display_name: str
    role: Literal["user", "admin"]


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


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None


class BanRequest(BaseModel):
    """The body of POST /users/{id}/ban; the user id is in the path."""

    model_config = ConfigDict(extra="forbid")

    reason: text(500) | None = None  # type: ignore[valid-type]


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
