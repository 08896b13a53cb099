"""Every event of the contract, declared once: its model, and at the bottom `EVENTS`.

The declaration names the one service that may publish it (the broker's topic permissions and
every consumer enforce that) and the services that hear it (their queues' bindings follow). A
handler may add only events its command declares it emits (shared/commands.py), and each body is
validated against its model before it enters the outbox.

Consumers validate an event against its model before handling it. Unknown fields are ignored, so
an event carrying a claimed role or an `unbanned: true` can grant nothing: only the fields named
here are ever read. The AsyncAPI document (shared/asyncapi.py) is generated from these models.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict

from shared.declarations import AUTH, POSTS, SERVICES, USERS, EventDeclaration
from shared.results import Timestamp


class Event(BaseModel):
    """Fields every event carries. Unknown fields are ignored: they can grant nothing."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: UUID
    occurred_at: Timestamp


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


class PostEdited(Event):
    post_id: UUID
    by: UUID


class PostDeleted(Event):
    post_id: UUID
    by: UUID


#: Every event, by routing key.
# fmt: off
EVENTS: dict[str, EventDeclaration] = {e.name: e for e in (
    EventDeclaration("user.registered", UserRegistered, owner=AUTH, consumers=(USERS,),
                     summary="An account was created: its public profile follows."),
    EventDeclaration("session.revoked", SessionRevoked, owner=AUTH, consumers=SERVICES,
                     summary="A session ended (logout, end-session, ban, set-role, revoke-token, reuse): its tokens die everywhere."),
    EventDeclaration("user.banned", UserBanned, owner=USERS, consumers=SERVICES,
                     summary="An account was banned: every service refuses it from now on.",
                     public=("user_id", "by", "occurred_at")),  # never the reason
    EventDeclaration("post.created", PostCreated, owner=POSTS, summary="A post was written.",
                     public=("post_id", "author_id", "occurred_at")),
    EventDeclaration("post.edited", PostEdited, owner=POSTS, summary="A post's title or body changed.",
                     public=("post_id", "by", "occurred_at")),
    EventDeclaration("post.deleted", PostDeleted, owner=POSTS, summary="A post was deleted.",
                     public=("post_id", "by", "occurred_at")),
)}
# fmt: on


def events_heard_by(service: str) -> tuple[str, ...]:
    """The routing keys a service's event queue is bound to, in declaration order."""
    return tuple(e.name for e in EVENTS.values() if any(s.name == service for s in e.consumers))


def public_events() -> tuple[str, ...]:
    """The routing keys the gateway relays on `GET /live` and reads its cache by."""
    return tuple(e.name for e in EVENTS.values() if e.public)


def events_published_by(service: str) -> tuple[str, ...]:
    return tuple(e.name for e in EVENTS.values() if e.owner.name == service)
