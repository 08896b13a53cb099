"""problem+json (RFC 9457) responses, the one shape every HTTP error takes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared import jsoncodec
from shared.errors import AppError

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(body=jsoncodec.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)


def problem_from_error(error: AppError, **extra: Any) -> web.Response:
    response = problem(error.status, error.title, error.detail, **extra)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response
