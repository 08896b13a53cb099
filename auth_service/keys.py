"""The Ed25519 keys auth_service signs with, as a key ring, and the JWKS that publishes them.

A rotation must sign nobody out, so auth_service holds a ring of keys, not one: the key that signs
now, a key about to sign, and older keys whose tokens may still be valid. The JWKS publishes all of
those; a key leaves it once no token it signed can still be valid, or at once when it is retired.
The ring comes from one of two places:

- The database (table `signing_key_ring`), shared by every replica. On first start a key is
  generated (or the development key of earlier versions is taken over). `rotate-key` inserts a
  key that signs `PUBLISH_AHEAD_SECONDS` later: every replica reloads the ring every
  `RELOAD_SECONDS`, so each publishes the key before any replica signs with it, and the current key
  is chosen when a token is signed, by each replica's clock, so all switch within a second.
  `retire-key` withdraws a key at once. Anyone who can read that table can mint tokens.
- `AUTH_SIGNING_KEY_FILE`, for keys managed outside: one PEM file (one key, as before), or a
  directory of `*.pem` files, re-read every `RELOAD_SECONDS`. Every file is published; a file
  named by a UTC time (`20261202T0300Z.pem`) signs from that time, so a key can be added ahead and
  published by every replica before it signs; among the keys that may sign, the latest (then the
  last by name) signs. Deleting a file retires its key. OPERATIONS.md has the runbook.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.database import TRANSIENT_DATABASE_ERRORS
from shared.errors import ServiceUnavailable
from shared.pacing import every
from shared.settings import ConfigurationError, Settings
from shared.tokens import ALGORITHM, LEEWAY_SECONDS

log = logging.getLogger(__name__)

#: How often each replica reads the ring again. A quarter second keeps "the JWKS lists the new key
#: before anyone signs with it" true with `PUBLISH_AHEAD_SECONDS` to spare, for one small query.
RELOAD_SECONDS = 0.25
#: How long after `rotate-key` the new key starts signing: enough for every replica to reload the
#: ring (and publish the key) first, and well inside the contract's second.
PUBLISH_AHEAD_SECONDS = 0.5
#: Kept in the JWKS beyond the last possible expiry of a key's tokens: the verifiers' leeway, plus
#: two seconds of clock difference between the replica that signed and the one that publishes.
RETENTION_MARGIN_SECONDS = LEEWAY_SECONDS + 2
#: What the JWKS may be cached for. Verifiers refetch it when this runs out, so a retired key stops
#: verifying everywhere about a second after `retire-key` (RELOAD_SECONDS here, then at most this).
JWKS_MAX_AGE_SECONDS = 1


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        return cls(private, thumbprint(private.public_key()))

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private.public_key(), self.kid)

    def verification_key(self) -> jwt.PyJWK:
        return jwt.PyJWK(self.public_jwk(), algorithm=ALGORITHM)


def public_jwk(public: Ed25519PublicKey, kid: str) -> dict[str, Any]:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def thumbprint(public: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint, used as the `kid`."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def load_pem(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{source} is not a readable unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{source} must hold an Ed25519 private key")
    return key


def to_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


# -- the ring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingKey:
    """A key with its schedule. Times are Unix seconds."""

    key: SigningKey
    signs_from: float
    retired_at: float | None = None
    #: The latest expiry of a long-lived service token this key signed (issue-service-token --ttl).
    service_tokens_until: float | None = None
    name: str = ""  # what an operator knows it by: the kid, or the file it came from


@dataclass(frozen=True)
class KeyRing:
    """One reading of the ring; which key signs and which are published follows from the clock.

    `token_lifetime` is how long a token signed by a key may be valid after the key stopped signing
    (None: as long as the key is in the ring, which is how externally managed keys are treated).
    """

    keys: tuple[RingKey, ...]
    token_lifetime: float | None

    def _live(self) -> list[RingKey]:
        return sorted((k for k in self.keys if k.retired_at is None), key=lambda k: (k.signs_from, k.name))

    def current(self, now: float) -> RingKey | None:
        """The key that signs at `now`: the latest to start signing, retired ones never."""
        started = [k for k in self._live() if k.signs_from <= now]
        return started[-1] if started else None

    def published(self, now: float) -> list[RingKey]:
        """The keys a token may still carry: upcoming, current, and older ones whose tokens can
        still be valid. A key is superseded when a later key starts signing."""
        live = self._live()
        published = []
        for index, ring_key in enumerate(live):
            successor = next((k for k in live[index + 1 :] if k.signs_from <= now), None)
            if successor is None or self.token_lifetime is None:
                published.append(ring_key)
                continue
            valid_until = successor.signs_from + self.token_lifetime
            if ring_key.service_tokens_until is not None:
                valid_until = max(valid_until, ring_key.service_tokens_until)
            if now < valid_until + RETENTION_MARGIN_SECONDS:
                published.append(ring_key)
        return published

    def jwks(self, now: float) -> dict[str, Any]:
        return {"keys": [ring_key.key.public_jwk() for ring_key in self.published(now)]}


class KeyStore(Protocol):
    """Where the ring is kept."""

    async def load(self) -> tuple[RingKey, ...]: ...


class _ParsedKeys:
    """Keys parsed once per PEM text: the ring is re-read four times a second."""

    def __init__(self) -> None:
        self._by_pem: dict[str, SigningKey] = {}

    def parse(self, pem: str, source: str) -> SigningKey:
        key = self._by_pem.get(pem)
        if key is None:
            key = self._by_pem[pem] = SigningKey.from_private(load_pem(pem.encode(), source))
        return key

    def keep_only(self, pems: set[str]) -> None:
        self._by_pem = {pem: key for pem, key in self._by_pem.items() if pem in pems}


class DatabaseKeyStore:
    """The ring in table `signing_key_ring`, which every replica of auth_service reads."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pems: dict[str, str] = {}  # kid -> PEM, read once per key
        self._parsed = _ParsedKeys()

    async def ensure_key(self) -> None:
        """Give an empty ring its first key: the development key of earlier versions if there is
        one (its tokens keep working), else a new one. Replicas starting at once take turns."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('auth.signing_key_ring'))")
            if await conn.fetchval("SELECT count(*) FROM signing_key_ring"):
                return
            legacy = await conn.fetchrow("SELECT private_pem, created_at FROM signing_keys WHERE name = 'development'")
            pem = legacy["private_pem"] if legacy else to_pem(Ed25519PrivateKey.generate())
            key = SigningKey.from_private(load_pem(pem.encode(), "the development signing key"))
            await conn.execute(
                "INSERT INTO signing_key_ring (kid, private_pem, signs_from) VALUES ($1, $2, $3)",
                key.kid,
                pem,
                legacy["created_at"] if legacy else datetime.now(UTC),
            )
            log.info("created the first signing key of the ring", extra={"kid": key.kid})

    async def load(self) -> tuple[RingKey, ...]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT kid, signs_from, retired_at, service_tokens_until FROM signing_key_ring")
            missing = [row["kid"] for row in rows if row["kid"] not in self._pems]
            if missing:  # only a new key's private half crosses the wire, once
                for row in await conn.fetch("SELECT kid, private_pem FROM signing_key_ring WHERE kid = ANY($1)", missing):
                    self._pems[row["kid"]] = row["private_pem"]
        ring = []
        for row in rows:
            key = self._parsed.parse(self._pems[row["kid"]], f"signing key {row['kid']}")
            if key.kid != row["kid"]:
                log.error("a key in signing_key_ring does not match its kid; it is ignored", extra={"kid": row["kid"]})
                continue
            ring.append(
                RingKey(
                    key,
                    row["signs_from"].timestamp(),
                    _seconds(row["retired_at"]),
                    _seconds(row["service_tokens_until"]),
                    name=key.kid,
                )
            )
        return tuple(ring)


def _seconds(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


class FileKeyStore:
    """`AUTH_SIGNING_KEY_FILE`: one PEM file, or a directory of `*.pem` files."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._parsed = _ParsedKeys()

    async def load(self) -> tuple[RingKey, ...]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> tuple[RingKey, ...]:
        try:
            files = sorted(self._path.glob("*.pem")) if self._path.is_dir() else [self._path]
            pems = {path: path.read_text() for path in files}
        except OSError as exc:
            raise ConfigurationError(f"AUTH_SIGNING_KEY_FILE cannot be read: {exc}") from None
        if not pems:
            raise ConfigurationError(f"AUTH_SIGNING_KEY_FILE names a directory with no *.pem file: {self._path}")
        ring = tuple(
            RingKey(self._parsed.parse(pem, f"AUTH_SIGNING_KEY_FILE {path}"), signs_from_name(path), name=path.name)
            for path, pem in pems.items()
        )
        self._parsed.keep_only(set(pems.values()))
        return ring


def signs_from_name(path: Path) -> float:
    """When the key in a file starts signing: the UTC time its name gives (`20261202T0300Z.pem`,
    `2026-12-02T03:00:00Z.pem`), or always, for any other name."""
    try:
        moment = datetime.fromisoformat(path.stem)
    except ValueError:
        return 0.0
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


#: What a reload can meet and live through: the database away, a key file being replaced.
_RELOAD_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DATABASE_ERRORS, ConfigurationError, OSError)


class LiveKeyRing:
    """The ring as this replica last read it, kept fresh by `run`: it signs tokens, serves the
    JWKS, and gives auth_service's own verifier its keys (a `KeySource`)."""

    def __init__(self, store: KeyStore, token_lifetime: float | None, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._token_lifetime = token_lifetime
        self._clock = clock
        self._ring = KeyRing((), token_lifetime)
        self._verification: dict[str, jwt.PyJWK] = {}
        self._signing_kid: str | None = None

    @property
    def ring(self) -> KeyRing:
        return self._ring

    async def reload(self) -> None:
        ring = KeyRing(await self._store.load(), self._token_lifetime)
        self._verification = {k.key.kid: self._verification.get(k.key.kid) or k.key.verification_key() for k in ring.keys}
        self._ring = ring

    async def run(self, stop: asyncio.Event) -> None:
        """Reload every RELOAD_SECONDS until `stop`; a failed reload keeps the ring last read."""
        failing = False
        async for _ in every(RELOAD_SECONDS, stop):
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - this loop must outlive any one reload, or rotation silently stops here
                if not failing:  # once per outage, not four times a second
                    level = logging.WARNING if isinstance(exc, _RELOAD_ERRORS) else logging.ERROR
                    log.log(level, "cannot reload the signing keys; keeping those last read", extra={"error": repr(exc)})
                failing = True
            else:
                if failing:
                    log.info("signing keys reloaded again")
                failing = False

    def signing_key(self) -> SigningKey:
        current = self._ring.current(self._clock())
        if current is None:
            raise ServiceUnavailable("No signing key is usable right now")
        if current.key.kid != self._signing_kid:  # so an operator sees each replica take up a rotation
            log.info("signing with a new key", extra={"kid": current.key.kid, "previous_kid": self._signing_kid})
            self._signing_kid = current.key.kid
        return current.key

    def jwks(self) -> dict[str, Any]:
        return self._ring.jwks(self._clock())

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if not any(k.key.kid == kid for k in self._ring.published(self._clock())):
            return None
        return self._verification.get(kid)


async def open_key_ring(settings: Settings, pool: asyncpg.Pool) -> LiveKeyRing:
    """The ring this process signs with, read once (a bad key file stops start-up here)."""
    store: KeyStore
    if settings.auth_signing_key_file:
        store, lifetime = FileKeyStore(Path(settings.auth_signing_key_file)), None
    else:
        database = DatabaseKeyStore(pool)
        await database.ensure_key()
        store, lifetime = database, float(settings.access_token_ttl_seconds)
        log.warning(
            "AUTH_SIGNING_KEY_FILE is not set: signing keys are kept in the database (auth.signing_key_ring), so whoever "
            "can read that table can mint tokens. Restrict it, or manage keys outside with AUTH_SIGNING_KEY_FILE."
        )
    live = LiveKeyRing(store, lifetime)
    await live.reload()
    if live.ring.current(time.time()) is None:
        raise ConfigurationError("no signing key may sign now (every key is retired or starts signing later)")
    return live
