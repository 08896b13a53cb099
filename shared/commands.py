"""The payload of every command on the `commands` exchange, as pydantic models.

Each model forbids fields it does not define (they are a 422, never a source of identity) and is
strict about types, so `"5"` is not a limit and `5` is not a title. The same models validate at the
gateway (an early 422 saves a hop) and again in the service, which trusts nothing upstream.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

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
    Field(json_schema_extra={"pattern": EMAIL_PATTERN, "maxLength": 254}),
]
_NO_NUL = {"pattern": r"^[^\u0000]*$"}
_NOT_BLANK = {"pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$"}  # something besides spaces, and no NUL


def text(max_length: int, *, min_length: int = 0) -> Any:
    """A string field with no NUL character (what PostgreSQL text can hold)."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length, json_schema_extra=_NO_NUL), AfterValidator(_no_nul)]


Password = text(256, min_length=8)
DisplayName = Annotated[str, Field(max_length=64, json_schema_extra=_NOT_BLANK), AfterValidator(_not_blank)]
Title = Annotated[str, Field(max_length=200, json_schema_extra=_NOT_BLANK), AfterValidator(_not_blank)]
Body = Annotated[str, Field(max_length=20_000, json_schema_extra=_NOT_BLANK), AfterValidator(_not_blank)]


class Payload(BaseModel):
    """Base for command payloads: closed, strict and immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Register(Payload):
    email: Email
    password: Password
    display_name: DisplayName


class Login(Payload):
    email: Email
    password: text(256, min_length=1)  # type: ignore[valid-type]


class Logout(Payload):
    pass


class GetMe(Payload):
    pass


class CreatePost(Payload):
    title: Title
    body: Body


class GetPost(Payload):
    post_id: UUID


class ListPosts(Payload):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: text(200) | None = None  # type: ignore[valid-type]


class DeletePost(Payload):
    post_id: UUID


class GetUser(Payload):
    user_id: UUID


class BanUser(Payload):
    user_id: UUID
    reason: text(500) | None = None  # type: ignore[valid-type]


#: Every command of the contract, by routing key.
COMMAND_PAYLOADS: dict[str, type[Payload]] = {
    "register": Register,
    "login": Login,
    "logout": Logout,
    "get-me": GetMe,
    "create-post": CreatePost,
    "get-post": GetPost,
    "list-posts": ListPosts,
    "delete-post": DeletePost,
    "get-user": GetUser,
    "ban-user": BanUser,
}


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, user-safe account of what is wrong; it never echoes the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
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
