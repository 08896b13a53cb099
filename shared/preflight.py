"""`python -m shared.preflight`: check that a process of this system has what it needs, before starting it.

It reads the same environment variables as every process and checks, each within `--timeout`:

    configuration  Settings.from_env() accepts every variable
    broker         AMQP_URL answers and lets the user in, and whose BROKER_USER_* it is; with
                   BROKER_TOPOLOGY=verify, the topology exists
    database       DATABASE_URL answers; the server version; each service's schema and its migrations
    jwks           AUTH_JWKS_URL serves an Ed25519 key (and the public half of AUTH_SIGNING_KEY_FILE, if set)
    signing key    AUTH_SIGNING_KEY_FILE, when set, is a readable unencrypted Ed25519 private key (or a
                   directory of them)

It prints one line per check, `ok` or `problem:` with what is wrong and what to do, and exits 0
only when every check passed. Nothing is created or changed anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika
import aiohttp
import asyncpg
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.broker import broker_urls
from shared.broker_failover import connect_first
from shared.database_url import parse_database_url
from shared.declarations import PROCESSES
from shared.migrations import PLATFORM_MIGRATIONS, MigrationSource
from shared.settings import ConfigurationError, Settings
from shared.tokens import parse_jwks
from shared.topology import ROUTES, TopologyError, verify

EXAMPLES = """examples:
  python -m shared.preflight
  python -m shared.preflight --timeout 10
  BROKER_TOPOLOGY=verify AMQP_URL=amqp://posts_service:secret@rabbitmq:5672/posts python -m shared.preflight
  docker compose run --rm posts_service python -m shared.preflight
"""
#: Each service's schema (its queue prefix) and the package holding its migrations.
PACKAGES = {"auth": "auth_service", "users": "users_service", "posts": "posts_service"}


class Problem(Exception):
    """What is wrong, in plain words, and what to do about it."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    run: Callable[[], Awaitable[str]]
    #: Said when no answer comes in time: what was asked and what to look at.
    silent: str


def _where(url: str) -> str:
    """host:port of a URL, without its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _reason(exc: BaseException) -> str:
    """Why a connection failed, as the system says it ("connection refused"), without a traceback."""
    code = getattr(exc, "errno", None) or next((arg for arg in exc.args if isinstance(arg, int)), None)
    return os.strerror(code).lower() if code else (str(exc) or type(exc).__name__)


def _path(url: str) -> str:
    return unquote(urlsplit(url).path.removeprefix("/"))


async def check_broker(settings: Settings, timeout: float) -> str:
    urls = broker_urls(settings.amqp_url)
    where, vhost = ", ".join(_where(url) for url in urls), _path(urls[0]) or "/"
    try:
        # With several brokers (a cluster's nodes), the first that answers: the processes need one.
        connection, reached = await connect_first(settings.amqp_url, timeout=timeout)
    except aio_pika.exceptions.ProbableAuthenticationError:
        raise Problem(f"RabbitMQ at {where} refused the user name or password in AMQP_URL: check them") from None
    except (aio_pika.exceptions.AMQPConnectionError, OSError) as exc:
        raise Problem(
            f"cannot connect to RabbitMQ at {where} ({_reason(exc)}): is it running, and are AMQP_URL's host and port right?"
        ) from None
    except aio_pika.exceptions.AMQPError:
        raise Problem(
            f"RabbitMQ at {where} let the user in but not into vhost {vhost!r}: create the vhost and grant the user "
            "access (rabbitmqctl add_vhost, set_permissions), or fix the path of AMQP_URL"
        ) from None
    user = settings.amqp_user
    owners = [p for p in PROCESSES if settings.broker_user(p.name) == user]
    # A process must log in as its own BROKER_USER_* (it refuses to start otherwise); an
    # operator's tool may be anyone, so this says whose it is rather than judging.
    who = f"{user!r} ({owners[0].broker_user_variable}, {owners[0].package}'s user)" if owners else f"{user!r} (no process's BROKER_USER_*)"
    try:
        found = connection.transport.connection.server_properties.get("version")  # type: ignore[union-attr]
        version = found.decode() if isinstance(found, bytes) else str(found)
        if settings.broker_topology == "declare":
            return (
                f"RabbitMQ {version} at {_where(urls[reached])}, vhost {vhost!r}, as {who}; each process declares its topology "
                f"(BROKER_TOPOLOGY=declare){await _other_nodes(urls, reached, timeout)}"
            )
        for service in ROUTES:  # a failed passive declare closes its channel: one channel per service
            try:
                await verify(await connection.channel(), service)
            except TopologyError as exc:
                raise Problem(str(exc)) from None
        return (
            f"RabbitMQ {version} at {_where(urls[reached])}, vhost {vhost!r}, as {who}; the exchanges and every service's queues "
            f"exist (BROKER_TOPOLOGY=verify){await _other_nodes(urls, reached, timeout)}"
        )
    finally:
        await connection.close()


async def _other_nodes(urls: list[str], reached: int, timeout: float) -> str:
    """With several brokers, whether the others let the user in too: one that does not is where a
    process would fail over to in vain. Said, not failed: a node may be down for maintenance."""
    others = [url for index, url in enumerate(urls) if index != reached]
    if not others:
        return ""

    async def reason(url: str) -> str | None:
        try:
            connection = await aio_pika.connect(url, timeout=timeout)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            return _reason(exc)
        await connection.close()
        return None

    failed = [f"{_where(url)} ({why})" for url, why in zip(others, await asyncio.gather(*map(reason, others)), strict=True) if why]
    if not failed:
        return f"; all {len(urls)} brokers in AMQP_URL answer"
    return f"; {len(urls) - len(failed)} of {len(urls)} brokers in AMQP_URL answer, not {', '.join(failed)}"


def _expected_migrations(schema: str) -> set[tuple[str, str]]:
    sources = [MigrationSource("platform", PLATFORM_MIGRATIONS), MigrationSource(schema, Path(str(files(PACKAGES[schema]) / "migrations")))]
    return {(source.name, path.stem) for source in sources for path in source.files()}


async def _schema_state(conn: asyncpg.Connection, schema: str, may_create: bool) -> str:
    if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.schema_migrations") is None:
        if not may_create:
            raise Problem(
                f"schema {schema} does not exist and the user in DATABASE_URL may not create it: "
                "GRANT CREATE ON DATABASE to that user, or start the service once as one who may"
            )
        return f"{schema} not created yet ({PACKAGES[schema]} creates it at start)"
    applied = {(r["source"], r["version"]) for r in await conn.fetch(f'SELECT source, version FROM "{schema}".schema_migrations')}
    expected = _expected_migrations(schema)
    if unknown := sorted(f"{source}/{version}" for source, version in applied - expected):
        raise Problem(
            f"schema {schema} has migrations this code does not know ({', '.join(unknown)}): a newer version "
            "migrated this database; run that version, or point DATABASE_URL at another database"
        )
    pending = len(expected - applied)
    return f"{schema} up to date" if not pending else f"{schema} has {pending} migration(s) to apply at start"


async def check_database(settings: Settings, timeout: float) -> str:
    where, database = parse_database_url(settings.database_url).where, _path(settings.database_url) or "(the user's default)"
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        raise Problem(
            f"PostgreSQL at {where} has no database {database!r}: create it (CREATE DATABASE), or fix the path of DATABASE_URL"
        ) from None
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise Problem(f"PostgreSQL at {where} refused the user or password in DATABASE_URL ({exc}): check them") from None
    except asyncpg.TargetServerAttributeNotMatched:
        raise Problem(
            f"PostgreSQL at {where} answers, but no host is what DATABASE_URL's target_session_attrs asks for "
            "(every one is a standby?): promote one, or fix the host list"
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Problem(
            f"cannot connect to PostgreSQL at {where} ({_reason(exc)}): is it running, and are DATABASE_URL's host and port right?"
        ) from None
    try:
        version = await conn.fetchval("SHOW server_version")
        may_create = await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")
        states = [await _schema_state(conn, schema, may_create) for schema in PACKAGES]
    finally:
        await conn.close()
    return f"PostgreSQL {version.split()[0]}, database {database!r}; " + ", ".join(states)


def _public_x(key_file: str) -> str:
    """The JWK `x` of the key in `key_file`, after checking it is a readable Ed25519 private key."""
    path = Path(key_file)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise Problem(
            f"AUTH_SIGNING_KEY_FILE {path} cannot be read ({_reason(exc)}): check the path and that this user may read it"
        ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Problem(
            f"AUTH_SIGNING_KEY_FILE {path} is not an unencrypted PEM private key: "
            f"make one with `openssl genpkey -algorithm ed25519 -out {path.name}`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
        raise Problem(
            f"AUTH_SIGNING_KEY_FILE {path} holds a key of type {kind}, not Ed25519: make one with `openssl genpkey -algorithm ed25519`"
        )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _key_files(key_file: str) -> list[str]:
    """The files AUTH_SIGNING_KEY_FILE names: itself, or the `*.pem` files of a directory."""
    path = Path(key_file)
    if not path.is_dir():
        return [key_file]
    files = sorted(str(p) for p in path.glob("*.pem"))
    if not files:
        raise Problem(f"AUTH_SIGNING_KEY_FILE {path} is a directory with no *.pem file: put the signing key there")
    return files


async def check_signing_key(settings: Settings) -> str:
    if not settings.auth_signing_key_file:
        return (
            "AUTH_SIGNING_KEY_FILE not set: auth_service keeps its signing keys in the database (rotate-key works); "
            "whoever can read auth.signing_key_ring can mint tokens"
        )
    files = _key_files(settings.auth_signing_key_file)
    for key_file in files:
        _public_x(key_file)
    if len(files) == 1 and files[0] == settings.auth_signing_key_file:
        return f"{settings.auth_signing_key_file} holds an Ed25519 key"
    return f"{settings.auth_signing_key_file} holds {len(files)} Ed25519 key file(s)"


async def check_jwks(settings: Settings, timeout: float) -> str:
    url = settings.auth_jwks_url
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, http.get(url) as response:
            if response.status != 200:
                raise Problem(f"{url} answered HTTP {response.status}: AUTH_JWKS_URL should be auth_service's /.well-known/jwks.json")
            document = await response.json(content_type=None)
    except aiohttp.ClientConnectorError as exc:
        raise Problem(
            f"nothing answers at {_where(url)} ({_reason(exc.os_error)}): start auth_service (it serves the keys), or fix AUTH_JWKS_URL"
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise Problem(f"could not read a JWKS from {url} ({type(exc).__name__}): is AUTH_JWKS_URL auth_service's key set?") from None
    if not (keys := parse_jwks(document)):
        raise Problem(f"{url} serves no Ed25519 key, so no token could be verified: is AUTH_JWKS_URL auth_service's key set?")
    if settings.auth_signing_key_file:
        try:
            xs = [_public_x(key_file) for key_file in _key_files(settings.auth_signing_key_file)]
        except Problem:
            xs = []  # the signing key check says what is wrong with the file
        published = {entry.get("x") for entry in document["keys"] if isinstance(entry, dict)}
        if any(x not in published for x in xs):
            raise Problem(
                f"{url} does not publish the key in AUTH_SIGNING_KEY_FILE: the auth_service there signs with another "
                "key, so tokens it issues would not match this file (another stack's auth_service? an old key file?)"
            )
    return f"{len(keys)} Ed25519 key(s) at {url}"


async def run_checks(settings: Settings, timeout: float) -> list[tuple[str, str | None, str]]:
    """(name, problem or None, detail) for every check but the configuration, run side by side."""
    checks = [
        Check(
            "broker",
            lambda: check_broker(settings, timeout),
            f"RabbitMQ at {', '.join(_where(url) for url in broker_urls(settings.amqp_url))}: is it reachable, and is AMQP_URL right?",
        ),
        Check(
            "database",
            lambda: check_database(settings, timeout),
            f"PostgreSQL at {parse_database_url(settings.database_url).where}: is it reachable, and is DATABASE_URL right?",
        ),
        Check("jwks", lambda: check_jwks(settings, timeout), f"{settings.auth_jwks_url}: is auth_service up, and is AUTH_JWKS_URL right?"),
        Check("signing key", lambda: check_signing_key(settings), "reading AUTH_SIGNING_KEY_FILE"),
    ]

    async def one(check: Check) -> tuple[str, str | None, str]:
        try:
            return check.name, None, await asyncio.wait_for(check.run(), timeout)
        except Problem as exc:
            return check.name, str(exc), ""
        except TimeoutError:
            return check.name, f"no answer within {timeout:g} s from {check.silent}", ""

    return list(await asyncio.gather(*(one(check) for check in checks)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.preflight",
        description="Check the configuration, the broker, the database, the JWKS and the signing key, and say in plain words what is wrong.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="how long each check may wait for an answer (default 5)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.timeout <= 300:
        print("error: --timeout must be between 0 and 300 seconds", file=sys.stderr)
        return 2
    logging.disable(logging.CRITICAL)  # the libraries' own complaints would only repeat ours, less plainly
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        print(f"configuration: problem: {exc}; fix that environment variable and run again")
        for name in ("broker", "database", "jwks", "signing key"):
            print(f"{name}: not checked: the configuration has a problem")
        return 1
    print("configuration: ok")
    results = asyncio.run(run_checks(settings, args.timeout))
    for name, problem, detail in results:
        print(f"{name}: problem: {problem}" if problem else f"{name}: ok ({detail})")
    return 1 if any(problem for _, problem, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
