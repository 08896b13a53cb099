"""Every command of the platform, declared once: its payload model, and at the bottom `COMMANDS`.

A declaration (`shared.declarations.Command`) names the command, its owning service, its payload
and result models, its policy, the events it may emit, whether it is a public read, and its HTTP
binding; everything else is derived from it (see shared/declarations.py). A service binds a
handler to each of its commands (`HANDLERS` in its handlers module) and refuses to start when one
is missing or extra.

Each payload model forbids fields it does not define (they are a 422, never a source of identity) and is
strict about types, so `"5"` is not a limit and `5` is not a title. The same models validate at the
gateway (an early 422 saves a hop) and again in the service, which trusts nothing upstream.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import JsonDict, SkipJsonSchema

from shared import results
from shared.authorization import ADMIN, PUBLIC, USER, Owner, OwnerOrAdmin, Resource
from shared.declarations import AUTH, POSTS, SECRET, SERVICES, USERS, Command, Http, Payload
from shared.errors import BadRequest, Unprocessable

#: An email address as accepted here: no spaces or control characters, one @, a dot in the domain.
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\.[^@\s\x00-\x1f\x7f-\x9f]+$"
_EMAIL = re.compile(EMAIL_PATTERN)


def _email(value: str) -> str:
    value = value.lower()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise ValueError("must be an email address like name@example.com")
    return value


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here as a 422, not later as a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    value = _no_nul(value).strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# The json_schema_extra patterns document in OpenAPI what the validators enforce, so generated
# clients (and schemathesis) know a blank title or a malformed email is refused.
Email = Annotated[
    str,
    AfterValidator(_email),
    Field(description="An email address; kept and compared in lower case", json_schema_extra={"pattern": EMAIL_PATTERN, "maxLength": 254}),
]
_NO_NUL: JsonDict = {"pattern": r"^[^\u0000]*$"}
_NOT_BLANK: JsonDict = {"pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$"}  # something besides spaces, and no NUL


def text(max_length: int, *, min_length: int = 0) -> Any:
    """A string field with no NUL character (what PostgreSQL text can hold)."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length, json_schema_extra=_NO_NUL), AfterValidator(_no_nul)]


# A password of a new account (at least 8), and one offered at login (whatever was once allowed).
# Both are SECRET: never kept in clear in a parked message or a log line, writeOnly in the schemas.
Password = Annotated[str, Field(min_length=8, max_length=256, json_schema_extra=_NO_NUL), AfterValidator(_no_nul), SECRET]
OfferedPassword = Annotated[str, Field(min_length=1, max_length=256, json_schema_extra=_NO_NUL), AfterValidator(_no_nul), SECRET]
# An opaque refresh token as login gave it out (43 characters; a longer limit leaves room to
# change its format without changing the schema). SECRET like a password: redacted when parked.
OfferedRefreshToken = Annotated[
    str,
    Field(min_length=1, max_length=512, json_schema_extra=_NO_NUL, description="The refresh token of the last login or refresh"),
    AfterValidator(_no_nul),
    SECRET,
]
DisplayName = Annotated[str, Field(max_length=64, json_schema_extra=_NOT_BLANK), AfterValidator(_not_blank)]
Title = Annotated[str, Field(max_length=200, json_schema_extra=_NOT_BLANK, examples=["Hello"]), AfterValidator(_not_blank)]
Body = Annotated[str, Field(max_length=20_000, json_schema_extra=_NOT_BLANK, examples=["My first post"]), AfterValidator(_not_blank)]


class Register(Payload):
    email: Email
    password: Password
    display_name: DisplayName


class Login(Payload):
    email: Email
    password: OfferedPassword


class Refresh(Payload):
    refresh_token: OfferedRefreshToken


class Logout(Payload):
    pass


class GetMe(Payload):
    pass


class ListSessions(Payload):
    pass


class EndSession(Payload):
    session_id: UUID


class CreatePost(Payload):
    title: Title
    body: Body


class GetPost(Payload):
    post_id: UUID


class ListPosts(Payload):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: text(200) | None = None  # type: ignore[valid-type]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a null default is no text: the schema shows the field as optional instead


class EditPost(Payload):
    """At least one of `title` and `body`; what is left out stays as it is."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["title"]}, {"required": ["body"]}]})

    post_id: UUID
    # Left out means "keep it"; an explicit null means nothing, so it is refused (and the schema
    # shows only text).
    title: Title | SkipJsonSchema[None] = Field(default=None, examples=["A better title"], json_schema_extra=_drop_default)
    body: Body | SkipJsonSchema[None] = Field(default=None, examples=["What I meant to say"], json_schema_extra=_drop_default)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in ("title", "body") if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{' and '.join(nulls)} must be text when given (leave a field out to keep it)")
        return data

    @model_validator(mode="after")
    def _changes_something(self) -> EditPost:
        if self.title is None and self.body is None:
            raise ValueError("give a title, a body or both")
        return self


class DeletePost(Payload):
    post_id: UUID


class GetUser(Payload):
    user_id: UUID


class BanUser(Payload):
    user_id: UUID
    reason: text(500) | None = None  # type: ignore[valid-type]


class ListAudit(Payload):
    decision: Literal["allowed", "denied", "replayed"] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    cursor: Annotated[str, Field(max_length=30)] | None = None


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, user-safe account of what is wrong; it never echoes the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "request"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "is not a field of this request"
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "The request has invalid fields"


def parse_payload(model: type[Payload], body: bytes | str) -> Payload:
    """Validate a JSON body against `model`: 400 if it is not JSON, 422 if the fields are wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("The body is not valid JSON") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise Unprocessable("The body must be a JSON object") from None
        raise Unprocessable(describe_validation_error(exc)) from None


def payload_from_mapping(model: type[Payload], data: dict[str, Any]) -> Payload:
    """Validate python values (already typed by the caller) against `model`."""
    try:
        return model.model_validate(data, strict=False)
    except ValidationError as exc:
        raise Unprocessable(describe_validation_error(exc)) from None


# -- the declarations ------------------------------------------------------------------------

#: What payloads name by id. An owner policy asks the resource for its owner; the injection
#: matrix makes one owned by its victim for every payload field that names one.
POST = Resource("post", service=POSTS.name, table="posts", id_field="post_id", owner_column="author_id")
PROFILE = Resource("user", service=USERS.name, table="profiles", id_field="user_id", owner_column="id")
#: A session (ended or not) is its account's: only that account may end it.
SESSION = Resource("session", service=AUTH.name, table="sessions", id_field="session_id", owner_column="account_id")
RESOURCES: tuple[Resource, ...] = (POST, PROFILE, SESSION)


def audit_command_name(service: str) -> str:
    """Each service serves its own audit trail as `list-audit.<service>`."""
    return f"list-audit.{service}"


#: Every command, by routing key.
# fmt: off
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("register", AUTH, Register, results.Account, PUBLIC, "Create an account.",
            emits=("user.registered",), errors=(409, 429), runs_alone=True, http=Http("POST", "/auth/register", status=201, no_store=True)),
    Command("login", AUTH, Login, results.TokenResponse, PUBLIC, "Open a session and get an access token and a refresh token.",
            replays=False, errors=(401, 403, 429), runs_alone=True, http=Http("POST", "/auth/login", no_store=True, refresh_cookie="issue")),
    Command("refresh", AUTH, Refresh, results.TokenResponse, PUBLIC,
            "Trade a refresh token for a new pair in the same session; a reused one revokes the session.",
            emits=("session.revoked",), replays=False, errors=(401, 403, 429), http=Http("POST", "/auth/refresh", no_store=True, refresh_cookie="issue")),
    Command("logout", AUTH, Logout, None, USER, "Revoke the caller's session everywhere.",
            emits=("session.revoked",), http=Http("POST", "/auth/logout", status=204, refresh_cookie="clear")),
    Command("get-me", AUTH, GetMe, results.Account, USER, "The caller's account.",
            replays=False, http=Http("GET", "/auth/me", no_store=True)),
    Command("list-sessions", AUTH, ListSessions, results.SessionList, USER,
            "The caller's open sessions: when each began and was last used, and from where.",
            replays=False, http=Http("GET", "/auth/sessions", no_store=True)),
    Command("end-session", AUTH, EndSession, None, Owner(SESSION, action="end this session"),
            "End one of the caller's sessions everywhere, its refresh tokens too (a lost phone); ending an ended one changes nothing.",
            emits=("session.revoked",), http=Http("DELETE", "/auth/sessions/{session_id}", status=204)),
    Command("create-post", POSTS, CreatePost, results.Post, USER, "Write a post.",
            emits=("post.created",), http=Http("POST", "/posts", status=201, location="/posts/{id}")),
    Command("get-post", POSTS, GetPost, results.Post, PUBLIC, "One post.",
            public_read=True, replays=False, http=Http("GET", "/posts/{post_id}")),
    Command("list-posts", POSTS, ListPosts, results.PostPage, PUBLIC, "Posts, newest first.",
            public_read=True, replays=False, http=Http("GET", "/posts")),
    Command("edit-post", POSTS, EditPost, results.Post, Owner(POST, action="edit this post"),
            "Change a post's title, body or both; the answer is the post as it now is.",
            emits=("post.edited",), http=Http("PATCH", "/posts/{post_id}")),
    Command("delete-post", POSTS, DeletePost, None, OwnerOrAdmin(POST, action="delete this post"), "Delete a post.",
            emits=("post.deleted",), http=Http("DELETE", "/posts/{post_id}", status=204)),
    Command("get-user", USERS, GetUser, results.UserProfile, PUBLIC, "A public profile (never the email).",
            public_read=True, replays=False, http=Http("GET", "/users/{user_id}")),
    Command("ban-user", USERS, BanUser, results.UserProfile, ADMIN,
            "Ban an account; banning a banned account again changes nothing.",
            emits=("user.banned",), errors=(409,), http=Http("POST", "/users/{user_id}/ban")),
    *(Command(audit_command_name(s.name), s, ListAudit, results.AuditPage, ADMIN,
              f"{s.package}'s authorization decisions, newest first.", replays=False) for s in SERVICES),
)}
# fmt: on

#: The payload model of every command, by routing key.
COMMAND_PAYLOADS: dict[str, type[Payload]] = {name: c.payload for name, c in COMMANDS.items()}


def commands_of(service: str) -> tuple[Command, ...]:
    """The commands a service consumes, in declaration order."""
    return tuple(c for c in COMMANDS.values() if c.service.name == service)
