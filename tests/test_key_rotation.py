"""Key rotation without downtime: `rotate-key`, `retire-key`, and keys managed outside.

The contract: after `rotate-key` every new token carries the new `kid` within one second; the JWKS
lists it and every older key that can still have unexpired tokens, so nobody is signed out; a key
leaves the JWKS once no token it signed can still be valid. `retire-key` withdraws a key at once.

The integration tests run on a stack of their own (its own database and vhost), with keys in the
database and short-lived tokens (ACCESS_TOKEN_TTL_SECONDS=6), so that a key leaving the JWKS can be
watched in seconds and the session stack's fixed key (which the token forge signs with) is left
alone. The ring's schedule, the directory of key files and the verifier's JWKS cache are also
tested on their own, with a fake clock or a small local JWKS server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth_service.keys import RETENTION_MARGIN_SECONDS, FileKeyStore, KeyRing, LiveKeyRing, RingKey, SigningKey, to_pem
from shared.errors import Unauthorized
from shared.preflight import Problem, check_signing_key
from shared.settings import Settings
from shared.tokens import JwksKeySource, TokenVerifier, freshness_seconds
from tests.support.accounts import User, login, register
from tests.support.backends import provisioned
from tests.support.broker import BrokerProbe
from tests.support.forge import TokenForge
from tests.support.stack import Stack, free_port, side_stack

TTL = 6
ISS, AUD = "auth_service", "posts-platform"
POST = {"title": "Across a rotation", "body": "Does this token still work?"}


def new_key() -> SigningKey:
    return SigningKey.from_private(Ed25519PrivateKey.generate())


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def poll(check: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> float:
    """Poll `check` until it is truthy; how long that took. Fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# -- the ring's schedule, on a fake clock ----------------------------------------------------------


@pytest.mark.unit
def test_a_rotated_key_signs_from_its_time_and_the_old_one_stays_while_its_tokens_can_be_valid() -> None:
    old, new = new_key(), new_key()
    ring = KeyRing((RingKey(old, 100.0), RingKey(new, 200.0)), token_lifetime=TTL)
    kids = lambda now: [k.key.kid for k in ring.published(now)]  # noqa: E731
    signer = lambda now: (current := ring.current(now)) and current.key  # noqa: E731
    assert signer(150.0) is old and kids(150.0) == [old.kid, new.kid], "published before it signs"
    assert signer(200.0) is new
    last_valid = 200.0 + TTL + RETENTION_MARGIN_SECONDS
    assert kids(last_valid - 0.1) == [old.kid, new.kid], "its tokens (and the verifiers' leeway) may still run"
    assert kids(last_valid) == [new.kid], "gone once no token it signed can be valid"


@pytest.mark.unit
def test_a_long_lived_service_token_keeps_its_key_published_and_retired_keys_are_never_used() -> None:
    old, new, leaked = new_key(), new_key(), new_key()
    ring = KeyRing(
        (RingKey(old, 100.0, service_tokens_until=10_000.0), RingKey(new, 200.0), RingKey(leaked, 300.0, retired_at=310.0)),
        token_lifetime=TTL,
    )
    current = ring.current(400.0)
    assert current is not None and current.key is new, "a retired key never signs"
    assert [k.key.kid for k in ring.published(5_000.0)] == [old.kid, new.kid]
    assert [k.key.kid for k in ring.published(10_000.0 + RETENTION_MARGIN_SECONDS)] == [new.kid]
    assert leaked.kid not in json.dumps(ring.jwks(400.0))


@pytest.mark.unit
async def test_a_directory_of_key_files_publishes_each_and_a_dated_file_signs_from_its_time(tmp_path: Path) -> None:
    first, second, upcoming = new_key(), new_key(), new_key()
    (tmp_path / "a-first.pem").write_text(to_pem(first.private))
    (tmp_path / "b-second.pem").write_text(to_pem(second.private))
    (tmp_path / "20990101T0000Z.pem").write_text(to_pem(upcoming.private))
    (tmp_path / "README.txt").write_text("not a key")
    now = [time.time()]
    live = LiveKeyRing(FileKeyStore(tmp_path), None, clock=lambda: now[0])
    await live.reload()
    assert live.signing_key().kid == second.kid, "the last by name among keys that may sign"
    assert {k["kid"] for k in live.jwks()["keys"]} == {first.kid, second.kid, upcoming.kid}, "every file is published"
    now[0] = 4_102_444_800.0  # 2100-01-01: the dated file's time has come
    assert live.signing_key().kid == upcoming.kid
    (tmp_path / "a-first.pem").unlink()  # deleting a file retires its key
    await live.reload()
    assert await live.get(first.kid) is None and await live.get(second.kid) is not None


@pytest.mark.unit
async def test_one_key_file_still_works_as_before(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "signing-key.pem").write_text(to_pem(key.private))
    live = LiveKeyRing(FileKeyStore(tmp_path / "signing-key.pem"), None)
    await live.reload()
    assert live.signing_key().kid == key.kid and [k["kid"] for k in live.jwks()["keys"]] == [key.kid]


@pytest.mark.unit
async def test_preflight_checks_every_file_of_a_key_directory(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text(to_pem(new_key().private))
    settings = Settings.from_env({"AUTH_SIGNING_KEY_FILE": str(tmp_path)})
    assert await check_signing_key(settings) == f"{tmp_path} holds 1 Ed25519 key file(s)"
    (tmp_path / "b.pem").write_text("not a key\n")
    with pytest.raises(Problem, match="b.pem is not an unencrypted PEM private key"):
        await check_signing_key(settings)
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(Problem, match="no \\*.pem file"):
        await check_signing_key(settings)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Cache-Control": "public, max-age=1"}, 1.0),
        ({"Cache-Control": "max-age=300", "Age": "100"}, 200.0),
        ({"Cache-Control": "no-cache"}, 0.0),
        ({"Cache-Control": "public"}, None),
        ({}, None),
    ],
)
def test_the_jwks_is_cached_by_its_http_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert freshness_seconds(headers) == seconds


# -- the verifier's JWKS cache, against a small local JWKS server -----------------------------------


class JwksServer:
    def __init__(self, keys: list[SigningKey], max_age: int = 1) -> None:
        self.keys, self.max_age, self.hits = keys, max_age, 0
        self.url = ""

    async def handle(self, _: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"keys": [k.public_jwk() for k in self.keys]}, headers={"Cache-Control": f"max-age={self.max_age}"})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    state = JwksServer([new_key()])
    app = web.Application()
    app.router.add_get("/jwks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/jwks"))
    yield state
    await server.close()


def signed(key: SigningKey) -> str:
    forge = TokenForge(key.private, issuer=ISS, audience=AUD)
    return forge.sign(forge.claims(str(uuid4()), str(uuid4())))


@pytest.mark.unit
async def test_a_withdrawn_key_stops_verifying_as_the_jwks_max_age_runs_out(jwks_server: JwksServer) -> None:
    """Even a token in the verified-token cache: its key is checked on every hit."""
    async with aiohttp.ClientSession() as session:
        source = JwksKeySource(jwks_server.url, session)
        source.start()
        try:
            check = TokenVerifier(source, issuer=ISS, audience=AUD)
            token = signed(jwks_server.keys[0])
            await check.verify(token)
            assert check.cached_tokens == 1
            jwks_server.keys[:] = [new_key()]  # withdrawn (retire-key)

            async def refused() -> bool:
                try:
                    await check.verify(token)
                except Unauthorized:
                    return True
                return False

            await poll(refused, timeout=3.0, what="a token of a withdrawn key refused")
        finally:
            await source.close()


@pytest.mark.unit
async def test_a_new_kid_waits_for_the_next_fetch_instead_of_failing(jwks_server: JwksServer) -> None:
    async with aiohttp.ClientSession() as session:
        source = JwksKeySource(jwks_server.url, session, min_refresh_seconds=1.0)
        check = TokenVerifier(source, issuer=ISS, audience=AUD)
        await check.verify(signed(jwks_server.keys[0]))
        rotated = new_key()
        jwks_server.keys.append(rotated)
        # Right after a fetch the window is closed: the request waits for it rather than 401.
        callers = await asyncio.gather(*(check.verify(signed(rotated)) for _ in range(20)))
        assert len(callers) == 20
        assert jwks_server.hits == 2, "twenty requests for one new kid share one fetch"


@pytest.mark.unit
async def test_a_flood_of_made_up_kids_makes_at_most_one_fetch_a_second(jwks_server: JwksServer) -> None:
    async with aiohttp.ClientSession() as session:
        source = JwksKeySource(jwks_server.url, session, min_refresh_seconds=1.0)
        source.start()  # the periodic refresh counts against the same budget
        try:
            check = TokenVerifier(source, issuer=ISS, audience=AUD)
            forge = TokenForge(jwks_server.keys[0].private, issuer=ISS, audience=AUD)
            started = time.monotonic()

            async def attacker() -> None:
                while time.monotonic() - started < 2.5:
                    with pytest.raises(Unauthorized):
                        await check.verify(forge.sign(forge.claims(str(uuid4()), str(uuid4())), headers={"kid": f"forged-{uuid4()}"}))

            await asyncio.gather(*(attacker() for _ in range(20)))
            elapsed = time.monotonic() - started
        finally:
            await source.close()
    assert jwks_server.hits <= elapsed + 1.5, f"{jwks_server.hits} fetches in {elapsed:.1f} s"


# -- against a running stack whose keys are in the database ----------------------------------------


class RingStack:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, broker: BrokerProbe) -> None:
        self.stack, self.http, self.broker = stack, http, broker

    async def jwks_kids(self, service: str = "gateway") -> set[str]:
        base = service if service.startswith("http") else self.stack.http_url(service)
        async with self.http.get(base + "/.well-known/jwks.json") as response:
            assert response.status == 200
            return {key["kid"] for key in (await response.json())["keys"]}

    def rotate(self) -> str:
        result = self.stack.run_cli("rotate-key")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    async def statuses(self, token: str) -> dict[str, Any]:
        """What each service answers this token, straight through the broker (no gateway check in
        front), and the gateway over HTTP."""

        def status(reply: dict[str, Any] | None) -> Any:
            assert reply is not None
            return "ok" if reply["ok"] is True else reply["error"]["status"]

        async with self.http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}) as response:
            gateway = response.status
        return {
            "gateway": gateway,
            "auth": status(await self.broker.command("get-me", {}, token=token)),
            "posts": status(await self.broker.command("create-post", POST, token=token)),
            "users": status(await self.broker.command("ban-user", {"user_id": str(uuid4())}, token=token)),
        }


ACCEPTED = {"gateway": 200, "auth": "ok", "posts": "ok", "users": 403}  # ban-user: the token is good, the role is not
REFUSED = {"gateway": 401, "auth": 401, "posts": 401, "users": 401}


@pytest.fixture(scope="module")
async def ring(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RingStack]:
    # No signing key file: keys in the database, where rotate-key and retire-key apply.
    settings = {"ACCESS_TOKEN_TTL_SECONDS": str(TTL)}
    async with provisioned() as backends, side_stack(backends, tmp_path_factory.mktemp("ring-stack"), settings, None) as stack:
        connection = await aio_pika.connect_robust(backends.amqp_url, reconnect_interval=1)
        try:
            broker = BrokerProbe(connection, backends.amqp_url)
            await broker.start()
            async with aiohttp.ClientSession(base_url=stack.gateway_url) as http:
                yield RingStack(stack, http, broker)
        finally:
            await connection.close()


async def test_rotate_key_makes_new_tokens_carry_the_new_kid_and_old_tokens_keep_working(ring: RingStack) -> None:
    before = await register(ring.http, "before")
    old_kid = kid_of(before.token)
    assert await ring.statuses(before.token) == ACCEPTED

    new_kid = ring.rotate()
    rotated_at = time.monotonic()
    assert new_kid != old_kid

    async def new_tokens_carry_it() -> bool:
        return kid_of(await login(ring.http, before.email, before.password)) == new_kid

    # The contract's second, with slack for a loaded machine (each try is a full login).
    await poll(new_tokens_carry_it, timeout=3.0, what="new tokens carry the new kid")
    assert time.monotonic() - rotated_at < 3.0
    for service in ("auth", "gateway"):
        assert {old_kid, new_kid} <= await ring.jwks_kids(service), f"{service}'s JWKS lists both keys"
        async with ring.http.get(ring.stack.http_url(service) + "/.well-known/jwks.json") as response:
            assert response.headers["Cache-Control"] == "public, max-age=1", "cached by verifiers for a second at most"
    assert await ring.statuses(before.token) == ACCEPTED, "a token signed before the rotation still works everywhere"
    fresh = await login(ring.http, before.email, before.password)
    assert kid_of(fresh) == new_kid and await ring.statuses(fresh) == ACCEPTED


async def test_every_replica_publishes_and_signs_with_the_rotated_key(ring: RingStack, tmp_path: Path) -> None:
    """A second auth_service on the same database: both read one ring, so a rotation reaches both
    (logins are shared between them by the broker, so each login may be signed by either)."""
    replica = Stack({**ring.stack.env, "AUTH_HTTP_PORT": str(free_port())}, tmp_path)
    replica.start("auth")
    try:
        await replica.wait_ready("auth")
        user = await register(ring.http, "replicas")
        new_kid = ring.rotate()

        async def both_publish() -> bool:
            published = [new_kid in await ring.jwks_kids(url) for url in (ring.stack.http_url("auth"), replica.http_url("auth"))]
            return all(published)

        await poll(both_publish, timeout=3.0, what="both replicas publish the new key")
        await asyncio.sleep(1.0)  # the contract's second
        kids = {kid_of(await login(ring.http, user.email, user.password)) for _ in range(6)}
        assert kids == {new_kid}, "whichever replica signed, the token carries the new kid"
    finally:
        replica.stop_all()


async def test_concurrent_clients_across_a_rotation_see_no_failure(ring: RingStack) -> None:
    """Eight clients write and read for a few seconds; a rotation happens in the middle, and each
    client signs in again after it (its next token carries a kid the verifiers may not know yet)."""
    users: list[User] = list(await asyncio.gather(*(register(ring.http, f"load{i}") for i in range(8))))
    answers: dict[int, int] = {}
    rotated = asyncio.Event()
    started = time.monotonic()

    async def client(user: User) -> None:
        token, signed_in_again = user.token, False
        while time.monotonic() - started < 5.0:
            if rotated.is_set() and not signed_in_again:
                # Eight logins at once can fill the hashing lane (a busy 503 with Retry-After, which
                # login() waits out like any client): what counts here is that the token it gets works.
                token = await login(ring.http, user.email, user.password)
                answers[200] = answers.get(200, 0) + 1
                signed_in_again = True
            headers = {"Authorization": f"Bearer {token}"}
            async with ring.http.post("/posts", json=POST, headers=headers) as response:
                answers[response.status] = answers.get(response.status, 0) + 1
            async with ring.http.get("/auth/me", headers=headers) as response:
                answers[response.status] = answers.get(response.status, 0) + 1

    async def operator() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(ring.rotate)
        await asyncio.sleep(1.0)  # the new key is current by now
        rotated.set()

    await asyncio.gather(operator(), *(client(user) for user in users))
    print(f"answers across the rotation: {dict(sorted(answers.items()))}")
    assert sum(answers.values()) > 50, answers
    assert all(200 <= status < 300 for status in answers), f"every answer 2xx: {answers}"


async def test_an_old_key_leaves_the_jwks_once_no_token_it_signed_can_be_valid(ring: RingStack) -> None:
    """...but not while a long-lived service token it signed is still valid."""
    user = await register(ring.http, "drop")
    first_key = kid_of(user.token)

    async def current(kid: str) -> bool:
        return kid_of(await login(ring.http, user.email, user.password)) == kid

    service_key = ring.rotate()
    superseded = time.monotonic()
    await poll(lambda: current(service_key), timeout=3.0, what="the new key signs")
    issued = ring.stack.run_cli("issue-service-token", f"svc-{uuid4().hex[:8]}", "--role", "user", "--ttl", "120")
    assert issued.returncode == 0, issued.stderr
    service_token = issued.stdout.strip().splitlines()[-1]
    assert kid_of(service_token) == service_key
    last_key = ring.rotate()
    await poll(lambda: current(last_key), timeout=3.0, what="the last key signs")

    async def first_gone() -> bool:
        return first_key not in await ring.jwks_kids()

    await poll(first_gone, timeout=TTL + RETENTION_MARGIN_SECONDS + 8, interval=0.25, what="the superseded key leaves the JWKS")
    assert time.monotonic() - superseded >= TTL, "not before its tokens could have expired"
    assert {service_key, last_key} <= await ring.jwks_kids(), "the service token's key stays while that token is valid"
    assert await ring.statuses(service_token) == ACCEPTED
    listed = ring.stack.run_cli("list-keys")
    assert listed.returncode == 0 and first_key in listed.stdout and "unpublished" in listed.stdout, listed.stdout


async def test_retire_key_kills_its_tokens_everywhere_within_a_second_and_signing_goes_on(ring: RingStack) -> None:
    user = await register(ring.http, "leak")
    leaked = kid_of(user.token)
    assert await ring.statuses(user.token) == ACCEPTED  # now in every verifier's verified-token cache

    result = ring.stack.run_cli("retire-key", leaked)
    assert result.returncode == 0, result.stderr
    retired_at = time.monotonic()
    replacement = result.stdout.strip().splitlines()[-1]
    assert replacement != leaked, "retiring the key that signs makes a new one current at once"

    async def refused_everywhere() -> bool:
        return await ring.statuses(user.token) == REFUSED

    await poll(refused_everywhere, timeout=4.0, interval=0.1, what="the retired key's token refused everywhere")
    print(f"retired key's token refused everywhere {time.monotonic() - retired_at:.2f} s after retire-key returned")
    assert leaked not in await ring.jwks_kids("auth") and leaked not in await ring.jwks_kids("gateway")
    fresh = await login(ring.http, user.email, user.password)
    assert kid_of(fresh) == replacement and await ring.statuses(fresh) == ACCEPTED
    again = ring.stack.run_cli("retire-key", leaked)
    assert again.returncode == 0 and "already retired" in again.stdout


async def test_key_commands_refuse_what_cannot_be_done(ring: RingStack, tmp_path: Path) -> None:
    unknown = ring.stack.run_cli("retire-key", "no-such-kid")
    assert unknown.returncode == 1 and "no signing key with kid no-such-kid" in unknown.stderr
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    key = new_key()
    (key_dir / "20261201T0000Z.pem").write_text(to_pem(key.private))
    outside = Stack({**ring.stack.env, "AUTH_SIGNING_KEY_FILE": str(key_dir)}, ring.stack.log_dir)
    for command in (("rotate-key",), ("retire-key", key.kid)):
        refused = outside.run_cli(*command)
        assert refused.returncode == 1 and "managed outside" in refused.stderr, refused.stderr
    listed = outside.run_cli("list-keys")
    assert listed.returncode == 0 and f"{key.kid} (20261201T0000Z.pem)" in listed.stdout and "signing" in listed.stdout
