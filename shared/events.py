"""The events of the contract, as the services read them: one model each, all in one place.

Consumers validate an event against its model before handling it. Unknown fields are ignored, so
an event carrying a claimed role or an `unbanned: true` can grant nothing: only the fields named
here are ever read. The AsyncAPI document (shared/asyncapi.py) is generated from these models.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    """Fields every event carries. Unknown fields are ignored: they can grant nothing."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: UUID
    occurred_at: str


class UserRegistered(Event):
    """Only the id and display name are read; any other field (a claimed role, say) is ignored."""

    user_id: UUID
    display_name: str


class UserBanned(Event):
    user_id: UUID
    by: UUID | None = None
    reason: str | None = None


class SessionRevoked(Event):
    session_id: UUID
    user_id: UUID


class PostCreated(Event):
    post_id: UUID
    author_id: UUID


class PostDeleted(Event):
    post_id: UUID
    by: UUID
