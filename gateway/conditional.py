"""Conditional GETs of the public reads: a strong ETag per answer, `If-None-Match` answered 304.

The ETag is a digest of the body, so every gateway replica gives the same answer the same tag
and a client revalidates against whichever replica it reaches. `Cache-Control: no-cache` lets a
browser or a proxy keep the answer but makes it ask again every time (RFC 9111 §5.2.2.4): with
the tag that costs a 304 with no body, and nothing is ever shown stale from a local copy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from aiohttp import web

#: What the public reads are served with: kept, but always revalidated.
CACHE_CONTROL = "no-cache"
#: An entity-tag in a list (RFC 9110 §8.8.3): optionally weak, then a quoted opaque tag.
_ENTITY_TAG = re.compile(r'(?:W/)?"([^"]*)"')


def etag_of(body: bytes) -> str:
    """A strong ETag: 128 bits of BLAKE2b of the body, base64url."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


@dataclass(frozen=True, slots=True)
class Representation:
    """A 200 answer as sent: the body bytes, its ETag and the headers of a 200 and of a 304."""

    body: bytes
    etag: str
    headers: dict[str, str]
    validators: dict[str, str]

    @classmethod
    def of(cls, body: bytes) -> Representation:
        etag = etag_of(body)
        validators = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        return cls(body, etag, {"Content-Type": "application/json", **validators}, validators)

    def answer(self, request: web.Request) -> web.Response:
        """200 with the body, or 304 with only the validators when the client holds this version."""
        if none_match(request.headers.get("If-None-Match"), self.etag):
            return web.Response(status=304, headers=self.validators)
        return web.Response(body=self.body, headers=self.headers)


def none_match(header: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag` (RFC 9110 §13.1.2: weak comparison, so `W/"x"` names
    `"x"`; `*` names any current representation), i.e. the answer is 304 Not Modified."""
    if header is None:
        return False
    if header == etag:  # what a browser sends back: the fast path
        return True
    if header.strip() == "*":
        return True
    opaque = etag[1:-1]
    return any(match.group(1) == opaque for match in _ENTITY_TAG.finditer(header))
