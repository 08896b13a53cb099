"""Token verification on its own: the algorithm pin, the claims, and the JWKS cache.

These run against a small local JWKS server, so the cache's behaviour (refetch on an unknown kid,
keep keys when a refresh fails, no hammering) is shown without the rest of the stack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import SigningKey
from shared.errors import Unauthorized
from shared.tokens import JwksKeySource, TokenVerifier, bearer_token
from tests.support.forge import TokenForge

pytestmark = pytest.mark.unit

ISS, AUD = "auth_service", "posts-platform"


@dataclass
class JwksServer:
    keys: list[SigningKey]
    fail: bool = False
    hits: int = 0
    url: str = ""
    server: TestServer | None = field(default=None, repr=False)

    async def handle(self, _: web.Request) -> web.Response:
        self.hits += 1
        if self.fail:
            return web.Response(status=500)
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]})


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    state = JwksServer([SigningKey.from_private(Ed25519PrivateKey.generate())])
    app = web.Application()
    app.router.add_get("/jwks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url, state.server = str(server.make_url("/jwks")), server
    yield state
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def forge_for(key: SigningKey) -> TokenForge:
    return TokenForge(key.private, issuer=ISS, audience=AUD)


def verifier(jwks: JwksServer, session: aiohttp.ClientSession, *, min_refresh: float = 0.0) -> TokenVerifier:
    return TokenVerifier(JwksKeySource(jwks.url, session, min_refresh_seconds=min_refresh), issuer=ISS, audience=AUD)


def good_claims(forge: TokenForge, **overrides: Any) -> dict[str, Any]:
    """A good token's claims with `overrides` applied; an override of None removes that claim."""
    claims = forge.claims(str(uuid4()), str(uuid4()))
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def test_a_valid_token_gives_the_caller(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    claims = good_claims(forge, role="admin", sub_type="service")
    caller = await verifier(jwks, session).verify(forge.sign(claims))
    assert str(caller.subject) == claims["sub"] and str(caller.session_id) == claims["sid"]
    assert caller.role == "admin" and caller.is_admin and caller.kind == "service"
    assert caller.token_id == claims["jti"] and caller.expires_at == claims["exp"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda f: f.alg_none(good_claims(f)), id="alg none"),
        pytest.param(lambda f: f.hs256_with_public_key(good_claims(f)), id="HS256 with the public key"),
        pytest.param(lambda f: f.foreign_key(good_claims(f)), id="foreign key, real kid"),
        pytest.param(lambda f: f.sign(good_claims(f, iat=int(time.time()) - 100, exp=int(time.time()) - 10)), id="expired"),
        pytest.param(lambda f: f.sign(good_claims(f, aud="other")), id="wrong aud"),
        pytest.param(lambda f: f.sign(good_claims(f, iss="other")), id="wrong iss"),
        pytest.param(lambda f: f.sign(good_claims(f), headers={"typ": "JWT"}), id="typ JWT"),
        pytest.param(lambda f: f.sign(good_claims(f), headers={"kid": "no-such-kid"}), id="unknown kid"),
        pytest.param(lambda f: f.sign(good_claims(f, role="superuser")), id="unknown role"),
        pytest.param(lambda f: f.sign(good_claims(f, sub="not-a-uuid")), id="non-UUID sub"),
        pytest.param(lambda f: f.sign(good_claims(f, iat=int(time.time()) + 3600)), id="issued in the future"),
        pytest.param(lambda f: "a.b.c", id="garbage"),
        *[
            pytest.param(lambda f, c=claim: f.sign(good_claims(f, **{c: None})), id=f"missing {claim}")
            for claim in ("iss", "aud", "sub", "sid", "role", "iat", "exp", "jti")
        ],
    ],
)
async def test_a_bad_token_is_refused(jwks: JwksServer, session: aiohttp.ClientSession, make: Any) -> None:
    with pytest.raises(Unauthorized):
        await verifier(jwks, session).verify(make(forge_for(jwks.keys[0])))


async def test_an_unknown_kid_refetches_the_key_set(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    check = verifier(jwks, session)
    await check.verify(forge_for(jwks.keys[0]).sign(good_claims(forge_for(jwks.keys[0]))))
    assert jwks.hits == 1
    rotated = SigningKey.from_private(Ed25519PrivateKey.generate())
    jwks.keys.append(rotated)
    await check.verify(forge_for(rotated).sign(good_claims(forge_for(rotated))))
    assert jwks.hits == 2, "a new kid must trigger exactly one refetch"


async def test_a_failed_refresh_keeps_the_cached_keys(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    source = JwksKeySource(jwks.url, session, min_refresh_seconds=0)
    check = TokenVerifier(source, issuer=ISS, audience=AUD)
    await check.verify(forge.sign(good_claims(forge)))
    jwks.fail = True
    assert await source.refresh() is True, "the cache must still hold the old key"
    await check.verify(forge.sign(good_claims(forge)))  # still verifies
    assert jwks.hits == 2


async def test_unknown_kids_do_not_hammer_the_key_server(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    check = verifier(jwks, session, min_refresh=60)
    for _ in range(20):
        with pytest.raises(Unauthorized):
            await check.verify(forge.sign(good_claims(forge), headers={"kid": f"forged-{uuid4()}"}))
    assert jwks.hits == 1


@pytest.mark.parametrize("value", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_a_missing_or_non_bearer_authorization_is_401(value: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(value)


def test_bearer_token_is_read_case_insensitively() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


async def test_a_cached_token_still_expires(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    check = verifier(jwks, session)
    now = int(time.time())
    # Inside the 5 s leeway by 2 s (a slow first JWKS fetch must not use the margin up), then past it.
    token = forge.sign(good_claims(forge, iat=now - 100, exp=now - 3))
    await check.verify(token)
    await asyncio.sleep(max(0.0, now + 3 - time.time()) + 0.5)  # now past exp + leeway
    with pytest.raises(Unauthorized, match="expired"):
        await check.verify(token)


async def test_a_cached_token_dies_with_its_key(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    old = jwks.keys[0]
    source = JwksKeySource(jwks.url, session, min_refresh_seconds=0)
    check = TokenVerifier(source, issuer=ISS, audience=AUD)
    token = forge_for(old).sign(good_claims(forge_for(old)))
    await check.verify(token)
    jwks.keys[:] = [SigningKey.from_private(Ed25519PrivateKey.generate())]  # the old key is withdrawn
    await source.refresh()
    with pytest.raises(Unauthorized):
        await check.verify(token)


async def test_the_cache_does_not_accept_a_tampered_copy(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    check = verifier(jwks, session)
    token = forge.sign(good_claims(forge))
    await check.verify(token)
    header, payload, signature = token.split(".")
    tampered = ".".join([header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")])
    with pytest.raises(Unauthorized):
        await check.verify(tampered)


async def test_the_verified_token_cache_is_bounded(jwks: JwksServer, session: aiohttp.ClientSession) -> None:
    forge = forge_for(jwks.keys[0])
    check = TokenVerifier(JwksKeySource(jwks.url, session, min_refresh_seconds=0), issuer=ISS, audience=AUD, cache_size=3)
    for _ in range(20):
        await check.verify(forge.sign(good_claims(forge)))
        assert check.cached_tokens <= 3
    assert check.cached_tokens == 3


async def test_the_cache_keeps_an_active_caller_through_a_flood(
    jwks: JwksServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Least recently used leaves first: a caller who keeps calling stays cached while a flood of
    new tokens passes through."""
    forge = forge_for(jwks.keys[0])
    check = TokenVerifier(JwksKeySource(jwks.url, session, min_refresh_seconds=0), issuer=ISS, audience=AUD, cache_size=3)
    active = forge.sign(good_claims(forge))
    await check.verify(active)
    signature_checks: list[str] = []
    verify_signed = check._verify_signed

    async def counting(token: str) -> Any:
        signature_checks.append(token)
        return await verify_signed(token)

    monkeypatch.setattr(check, "_verify_signed", counting)
    for _ in range(10):
        await check.verify(forge.sign(good_claims(forge)))
        await check.verify(active)
    assert active not in signature_checks, "the active caller's token was evicted and checked again"
