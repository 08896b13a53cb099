"""Access-token verification: who is calling.

`TokenVerifier.verify` turns a bearer token into a `Caller` or raises `Unauthorized`. It pins the
algorithm (EdDSA only) and the type (`at+jwt`), requires every claim of the contract, checks
issuer, audience and expiry, and finds the key by `kid` in a JWKS it caches. Whether the session
is still alive and the account not banned is a database question answered in `revocation.py`;
whether the caller may do a given thing is `authorization.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from uuid import UUID

import aiohttp
import jwt
from jwt.exceptions import InvalidTokenError, PyJWKError

from shared.errors import Unauthorized
from shared.roles import ROLES, Role

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "role", "iat", "exp", "jti")
#: Clock skew tolerated between the host that signed and the host that verifies.
LEEWAY_SECONDS = 5

SubjectKind = Literal["user", "service"]


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller. Only a token signed by auth_service can produce one."""

    subject: UUID
    session_id: UUID
    role: Role
    token_id: str
    expires_at: int
    kind: SubjectKind = "user"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def describe(self) -> str:
        """How the caller shows in logs and the audit trail."""
        return f"{self.kind}:{self.subject}"


class KeySource(Protocol):
    """Where verification keys come from, by `kid`."""

    async def get(self, kid: str) -> jwt.PyJWK | None: ...


class StaticKeySource:
    """Keys held in memory, fixed for the life of the object (tools and tests)."""

    def __init__(self, keys: dict[str, jwt.PyJWK]) -> None:
        self._keys = dict(keys)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The Ed25519 keys of a JWKS document, by kid; keys of any other kind are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return keys
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm=ALGORITHM)
        except PyJWKError:
            log.warning("skipping an unreadable key in the JWKS", extra={"kid": entry["kid"]})
    return keys


#: How long a JWKS is used when its response says nothing about caching, and the most it is ever used.
DEFAULT_JWKS_MAX_AGE_SECONDS = 60.0
MAX_JWKS_MAX_AGE_SECONDS = 3600.0
#: How many withdrawn kids are remembered (a few a year in practice; the bound is for safety).
WITHDRAWN_KIDS_KEPT = 1000


def freshness_seconds(headers: Mapping[str, str]) -> float | None:
    """How long a response may be used, from its Cache-Control max-age less its Age (RFC 9111);
    0 for no-cache or no-store; None when the headers do not say."""
    directives = {}
    for part in headers.get("Cache-Control", "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    try:
        max_age = float(int(directives["max-age"]))
    except (KeyError, ValueError):
        return None
    try:
        age = float(int(headers.get("Age", "0")))
    except ValueError:
        age = 0.0
    return min(max(max_age - age, 0.0), MAX_JWKS_MAX_AGE_SECONDS)


class JwksKeySource:
    """A JWKS fetched over HTTP and cached as key objects, by its HTTP cache headers.

    Three things fetch it, and together they make at most one fetch per `min_refresh_seconds`:
    - `start()` keeps it fresh in the background: fetched again when its max-age runs out, so a
      key auth_service withdrew (retire-key) stops verifying here within about that max-age.
    - An unknown `kid` (a key just rotated in) fetches it at once, or, when a fetch happened less
      than `min_refresh_seconds` ago, waits for the next one rather than answer 401: every request
      that waits shares that one fetch, so a flood of forged kids makes one fetch per window, not
      one per request. If the next fetch is more than `max_wait_seconds` away, the request is not
      held (the key is reported unknown at once).
    - `refresh()`, called directly.
    A kid that left the key set (rotated out, retired) is remembered as withdrawn and refused at
    once, without waiting for a fetch: its tokens are no longer good, and a client replaying one
    should not hold a request for a second. Should it come back (a key file restored, replicas that
    disagree for a moment), the next periodic fetch takes it back.
    A failed fetch keeps the keys we had: unlike PyJWKClient, a blip at auth_service never turns
    every valid token into a 401 (the price: while auth_service cannot be reached, a key it
    withdrew keeps verifying here).
    """

    def __init__(
        self, url: str, session: aiohttp.ClientSession, *, min_refresh_seconds: float = 1.0, max_wait_seconds: float = 2.0
    ) -> None:
        self._url = url
        self._session = session
        self._min_refresh = min_refresh_seconds
        self._max_wait = max_wait_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._withdrawn: dict[str, None] = {}  # an ordered set, the oldest dropped past WITHDRAWN_KIDS_KEPT
        self._last_attempt = float("-inf")  # time.monotonic() when the last fetch started
        self._fresh_for = DEFAULT_JWKS_MAX_AGE_SECONDS
        self._last_ok = False
        self._warned = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: How many fetches were made, whatever their outcome.
        self.fetches = 0

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is None and kid not in self._withdrawn:
            await self._fetch_for(time.monotonic())
            key = self._keys.get(kid)
        return key

    async def _fetch_for(self, asked_at: float) -> None:
        """Make sure a fetch starts after `asked_at`, keeping to one per window."""
        if self._last_attempt + self._min_refresh - asked_at > self._max_wait:
            return
        async with self._lock:
            if self._last_attempt >= asked_at:
                return  # another request's fetch started after we asked: it answers us too
            # Sleeping under the lock is the point: whoever else asks meanwhile waits for this fetch.
            await asyncio.sleep(max(self._last_attempt + self._min_refresh - time.monotonic(), 0.0))
            await self._fetch()

    async def refresh(self, *, force: bool = True) -> bool:
        """Fetch the JWKS again; True when the cache now holds at least one key."""
        async with self._lock:
            if not force and time.monotonic() - self._last_attempt < self._min_refresh:
                return self.loaded
            await self._fetch()
            return self.loaded

    async def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
        self.fetches += 1
        try:
            timeout = aiohttp.ClientTimeout(total=3)
            async with self._session.get(self._url, timeout=timeout) as response:
                response.raise_for_status()
                document = await response.json(content_type=None)
                fresh_for = freshness_seconds(response.headers)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if not self._warned:  # once per outage, not once a second
                log.warning("could not refresh the JWKS; keeping the cached keys", extra={"error": str(exc)})
                self._warned = True
            self._last_ok = False
            return
        keys = parse_jwks(document)
        if not keys:
            log.warning("the JWKS had no usable key; keeping the cached keys")
            self._last_ok = False
            return
        for kid in self._keys.keys() - keys.keys():
            self._withdrawn[kid] = None
        for kid in keys.keys() & self._withdrawn.keys():
            del self._withdrawn[kid]
        while len(self._withdrawn) > WITHDRAWN_KIDS_KEPT:
            del self._withdrawn[next(iter(self._withdrawn))]
        self._keys = keys
        self._warned = False
        self._fresh_for = DEFAULT_JWKS_MAX_AGE_SECONDS if fresh_for is None else fresh_for
        self._last_ok = True

    def start(self) -> None:
        """Keep the key set fresh in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_fresh(), name="jwks-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _next_due(self) -> float:
        # After a failure, try again as soon as the window allows; never more often than that.
        return self._last_attempt + max(self._fresh_for if self._last_ok else 0.0, self._min_refresh)

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(max(self._next_due() - time.monotonic(), 0.0))
            if time.monotonic() >= self._next_due():  # else a request fetched meanwhile: sleep on
                await self.refresh(force=False)


class TokenVerifier:
    """Checks signature, algorithm, type, issuer, audience, expiry and claims of a token.

    A token that verified is remembered by its SHA-256 digest until it expires, so a caller's next
    command skips the signature check (the costliest step). At most `cache_size` are remembered,
    the least recently used leaving first: only tokens that verified get in, and a flood of new
    ones (a user logging in again and again) pushes out idle entries, not the active callers. The cache only saves work: expiry is
    checked again on every hit, a token whose key has left the key set is verified afresh (and
    fails), and whether the *session* is still alive is never cached — that is `revocation.py`'s
    database check, which runs for every command.
    """

    def __init__(self, keys: KeySource, *, issuer: str, audience: str, cache_size: int = 10_000) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._cache: dict[bytes, tuple[Caller, str]] = {}
        self._cache_size = cache_size

    async def verify(self, token: str) -> Caller:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.pop(digest, None)
        if hit is not None:
            caller, kid = hit
            if time.time() > caller.expires_at + LEEWAY_SECONDS:
                raise Unauthorized("The access token has expired")
            if await self._keys.get(kid) is not None:
                self._cache[digest] = hit  # back in as the most recently used
                return caller
            # its key was withdrawn: check it from scratch
        caller, kid = await self._verify_signed(token)
        while len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # the least recently used
        self._cache[digest] = (caller, kid)
        return caller

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (at most `cache_size`)."""
        return len(self._cache)

    async def _verify_signed(self, token: str) -> tuple[Caller, str]:
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise Unauthorized("The access token is malformed") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("The access token uses an algorithm that is not accepted")
        if header.get("typ") != TOKEN_TYPE:
            raise Unauthorized("The access token is not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("The access token names no signing key")
        key = await self._keys.get(kid)
        if key is None:
            raise Unauthorized("The access token was signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The access token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The access token is not meant for this system") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The access token was not issued by auth_service") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The access token lacks the {exc.claim!r} claim") from None
        except InvalidTokenError:
            raise Unauthorized("The access token is invalid") from None
        return caller_from_claims(claims), kid


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    """Build a Caller from verified claims, checking the shape of each one."""
    try:
        subject = UUID(str(claims["sub"]))
        session_id = UUID(str(claims["sid"]))
    except ValueError:
        raise Unauthorized("The access token has a malformed subject or session") from None
    if claims["role"] not in ROLES:
        raise Unauthorized("The access token has an unknown role")
    role = Role(claims["role"])
    jti, exp = claims["jti"], claims["exp"]
    if not isinstance(jti, str) or not jti or not isinstance(exp, int):
        raise Unauthorized("The access token has malformed claims")
    kind: SubjectKind = "service" if claims.get("sub_type") == "service" else "user"
    return Caller(subject=subject, session_id=session_id, role=role, token_id=jti, expires_at=exp, kind=kind)


def bearer_token(authorization: str | None) -> str:
    """The token from an `Authorization: Bearer …` value, or 401."""
    if not authorization:
        raise Unauthorized("You need to sign in to do this")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The authorization must be 'Bearer <access token>'")
    return token.strip()
