"""One error tree for the whole system.

Every error a caller can see is an `AppError`; it carries the HTTP status the gateway answers with
and a detail that is safe to show a person. Anything else that escapes a handler is a bug and is
reported as a bare 500 with no internals.

    AppError (status, title, detail)
     ├── BadRequest              400  the message is not JSON, or not a command at all
     ├── Unauthorized            401  no token, or one that does not verify
     ├── Forbidden               403  a valid caller who may not do this (banned, not owner, not admin)
     ├── NotFound                404  the resource does not exist
     ├── Conflict                409  the change clashes with current state (email taken)
     ├── PayloadTooLarge         413  the body is over the size limit
     ├── UnsupportedMediaType    415  an HTTP body that does not say it is application/json
     ├── Unprocessable           422  well-formed JSON with the wrong fields or types
     ├── TooManyRequests         429  rate limited; carries retry_after seconds
     ├── InternalError           500  a bug; the detail never says more than that
     ├── ServiceUnavailable      503  the broker or a service is down; may carry retry_after
     └── GatewayTimeout          504  no reply came in time
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """An error a caller is told about: status, short title, and a human detail."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    default_detail: ClassVar[str] = "Something went wrong on our side"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        self.detail = detail or self.default_detail
        self.retry_after = retry_after
        super().__init__(self.detail)

    def to_dict(self) -> dict[str, Any]:
        """The error as it travels in a broker reply (`{"ok": false, "error": ...}`)."""
        body: dict[str, Any] = {"status": self.status, "title": self.title, "detail": self.detail}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class BadRequest(AppError):
    status = 400
    title = "Bad Request"
    default_detail = "The request could not be read"


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"
    default_detail = "You need to sign in to do this"


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    default_detail = "You do not have permission to do this"


class NotFound(AppError):
    status = 404
    title = "Not Found"
    default_detail = "No such resource"


class Conflict(AppError):
    status = 409
    title = "Conflict"
    default_detail = "The request conflicts with the current state"


class PayloadTooLarge(AppError):
    status = 413
    title = "Payload Too Large"
    default_detail = "The request body is too large"


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported Media Type"
    default_detail = "The body must be JSON, sent with Content-Type: application/json"


class Unprocessable(AppError):
    status = 422
    title = "Unprocessable Content"
    default_detail = "The request has invalid fields"


class TooManyRequests(AppError):
    status = 429
    title = "Too Many Requests"
    default_detail = "Too many attempts; try again later"


class InternalError(AppError):
    status = 500
    title = "Internal Server Error"


class ServiceUnavailable(AppError):
    status = 503
    title = "Service Unavailable"
    default_detail = "The service is temporarily unavailable; try again shortly"


class GatewayTimeout(AppError):
    status = 504
    title = "Gateway Timeout"
    default_detail = "The service did not answer in time"


_BY_STATUS: dict[int, type[AppError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        TooManyRequests,
        InternalError,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


def error_from_dict(data: Any) -> AppError:
    """Rebuild an error from a broker reply; anything malformed becomes a 502-safe 500."""
    if not isinstance(data, dict) or not isinstance(data.get("status"), int):
        return InternalError("The service sent an unreadable error")
    cls = _BY_STATUS.get(data["status"], InternalError)
    detail = data.get("detail") if isinstance(data.get("detail"), str) else None
    retry_after = data.get("retry_after") if isinstance(data.get("retry_after"), int) else None
    return cls(detail, retry_after=retry_after)
