"""Bodies of the HTTP API that are not a command's result: the problem document.

Results are the commands' own (shared/results.py); they are re-exported here for the tests and
the OpenAPI document, which read the HTTP API's shapes from one place.
"""

from __future__ import annotations

from pydantic import BaseModel

from shared.results import Account, AuditEntry, AuditPage, Post, PostPage, TokenResponse, UserProfile

__all__ = ["Account", "AuditEntry", "AuditPage", "Post", "PostPage", "Problem", "TokenResponse", "UserProfile"]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
