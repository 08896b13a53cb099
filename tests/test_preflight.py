"""`python -m shared.preflight`, run as an operator runs it, against the test stack and broken settings.

With the stack's own environment every check is `ok` and it exits 0. With each thing broken (a
wrong AMQP port, a database that does not exist, a JWKS URL where nothing listens, a key file that
cannot be read, a server that accepts connections and never answers) it exits non-zero, names each
problem in plain words, and answers within its timeout: every run here has a hard deadline.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from tests.support.backends import Backends, _create_vhost
from tests.support.stack import ROOT, Stack, free_port

CHECKS = ("configuration", "broker", "database", "jwks", "signing key")


async def preflight(env: dict[str, str], *args: str, deadline: float = 30) -> tuple[int, dict[str, str], float]:
    """Exit code, each check's verdict by name, and how long it took."""
    started = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.preflight", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline,
    )
    verdicts = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert tuple(verdicts) == CHECKS, result.stdout + result.stderr
    return result.returncode, verdicts, time.monotonic() - started


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def with_changes(stack: Stack, **changes: str) -> dict[str, str]:
    return {**stack.env, **changes}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_every_check_passes_against_the_running_stack(stack: Stack) -> None:
    code, verdicts, _ = await preflight(stack.env)
    assert code == 0, verdicts
    assert all(v.startswith("ok") for v in verdicts.values()), verdicts
    assert "RabbitMQ" in verdicts["broker"] and "PostgreSQL" in verdicts["database"]
    assert "auth up to date, users up to date, posts up to date" in verdicts["database"]
    assert "Ed25519 key" in verdicts["jwks"] and "Ed25519 key" in verdicts["signing key"]


async def test_several_brokers_one_that_answers_is_enough_and_the_others_are_named(stack: Stack) -> None:
    url = stack.env["AMQP_URL"]
    dead = urlunsplit(urlsplit(url)._replace(netloc=f"{urlsplit(url).netloc.rpartition('@')[0]}@127.0.0.1:{free_port()}"))
    code, verdicts, _ = await preflight(with_changes(stack, AMQP_URL=f"{dead},{url}"))
    assert code == 0, verdicts
    assert "1 of 2 brokers in AMQP_URL answer, not 127.0.0.1:" in verdicts["broker"], verdicts
    code, verdicts, _ = await preflight(with_changes(stack, AMQP_URL=f"{url},{url}"))
    assert code == 0 and "all 2 brokers in AMQP_URL answer" in verdicts["broker"], verdicts
    code, verdicts, _ = await preflight(with_changes(stack, AMQP_URL=f"{dead},{dead}"))
    assert code != 0 and verdicts["broker"].startswith("problem: cannot connect to RabbitMQ at 127.0.0.1:"), verdicts


async def test_verify_mode_checks_the_topology_exists(stack: Stack, backends: Backends) -> None:
    code, verdicts, _ = await preflight(with_changes(stack, BROKER_TOPOLOGY="verify"))
    assert code == 0 and "every service's queues exist" in verdicts["broker"], verdicts

    vhost = f"zt_preflight_{uuid4().hex[:10]}"
    delete_vhost = await asyncio.to_thread(_create_vhost, backends.amqp_url, vhost)
    if delete_vhost is None:
        pytest.skip("cannot create a vhost here")
    try:
        empty = urlunsplit(urlsplit(stack.env["AMQP_URL"])._replace(path="/" + vhost))
        code, verdicts, _ = await preflight(with_changes(stack, BROKER_TOPOLOGY="verify", AMQP_URL=empty))
    finally:
        await asyncio.to_thread(delete_vhost)
    assert code != 0
    assert verdicts["broker"].startswith("problem: the broker topology is incomplete"), verdicts
    assert "python -m shared.topology declare" in verdicts["broker"]


async def test_each_broken_setting_is_named_in_plain_words(stack: Stack, tmp_path: Path) -> None:
    closed = free_port()
    env = with_changes(
        stack,
        AMQP_URL=f"amqp://guest:guest@127.0.0.1:{closed}/",
        DATABASE_URL=stack.env["DATABASE_URL"].rsplit("/", 1)[0] + "/no_such_database",
        AUTH_JWKS_URL=f"http://127.0.0.1:{closed}/.well-known/jwks.json",
        AUTH_SIGNING_KEY_FILE=str(tmp_path / "missing.pem"),
    )
    code, verdicts, took = await preflight(env, "--timeout", "3")
    assert code != 0
    assert verdicts["configuration"] == "ok"
    assert verdicts["broker"] == (
        f"problem: cannot connect to RabbitMQ at 127.0.0.1:{closed} (connection refused): "
        "is it running, and are AMQP_URL's host and port right?"
    )
    assert verdicts["database"].startswith(f"problem: PostgreSQL at {where(env['DATABASE_URL'])} has no database 'no_such_database': "), (
        verdicts
    )
    assert verdicts["jwks"] == (
        f"problem: nothing answers at 127.0.0.1:{closed} (connection refused): start auth_service (it serves the keys), or fix AUTH_JWKS_URL"
    )
    assert verdicts["signing key"].startswith(f"problem: AUTH_SIGNING_KEY_FILE {tmp_path / 'missing.pem'} cannot be read (no such file")
    assert took < 15


async def test_a_server_that_never_answers_is_a_problem_not_a_hang(stack: Stack, silent_port: int) -> None:
    env = with_changes(
        stack,
        AMQP_URL=f"amqp://guest:guest@127.0.0.1:{silent_port}/",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{silent_port}/postgres",
        AUTH_JWKS_URL=f"http://127.0.0.1:{silent_port}/.well-known/jwks.json",
    )
    code, verdicts, took = await preflight(env, "--timeout", "1", deadline=20)
    assert code != 0
    for name, what in (("broker", "RabbitMQ"), ("database", "PostgreSQL"), ("jwks", "http://")):
        assert verdicts[name].startswith(f"problem: no answer within 1 s from {what}"), verdicts[name]
    assert took < 10


async def test_wrong_credentials_and_wrong_keys_are_named(stack: Stack, tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(
        generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    amqp = urlsplit(stack.env["AMQP_URL"])
    wrong_password = urlunsplit(amqp._replace(netloc=f"{amqp.username}:wrong-{uuid4().hex[:6]}@{where(stack.env['AMQP_URL'])}"))
    code, verdicts, _ = await preflight(with_changes(stack, AMQP_URL=wrong_password, AUTH_SIGNING_KEY_FILE=str(rsa)))
    assert code != 0
    assert verdicts["broker"] == f"problem: RabbitMQ at {where(wrong_password)} refused the user name or password in AMQP_URL: check them"
    assert verdicts["signing key"].startswith(f"problem: AUTH_SIGNING_KEY_FILE {rsa} holds a key of type RSA, not Ed25519: ")

    garbage, foreign = tmp_path / "garbage.pem", tmp_path / "foreign.pem"
    garbage.write_text("not a key\n")
    foreign.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, verdicts, _ = await preflight(with_changes(stack, AUTH_SIGNING_KEY_FILE=str(garbage)))
    assert code != 0 and "is not an unencrypted PEM private key" in verdicts["signing key"]
    code, verdicts, _ = await preflight(with_changes(stack, AUTH_SIGNING_KEY_FILE=str(foreign)))
    assert code != 0 and verdicts["signing key"].startswith("ok")
    assert verdicts["jwks"].startswith("problem: ") and "does not publish the key in AUTH_SIGNING_KEY_FILE" in verdicts["jwks"]


async def test_a_bad_variable_stops_it_before_anything_is_contacted(stack: Stack) -> None:
    code, verdicts, _ = await preflight(with_changes(stack, ACCESS_TOKEN_TTL_SECONDS="soon"))
    assert code == 1
    assert (
        verdicts["configuration"]
        == "problem: ACCESS_TOKEN_TTL_SECONDS must be a whole number, got 'soon'; fix that environment variable and run again"
    )
    assert all(verdicts[name] == "not checked: the configuration has a problem" for name in CHECKS[1:])


@pytest.mark.unit
def test_help_shows_examples() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.preflight", "--help"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--timeout" in result.stdout
