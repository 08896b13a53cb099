"""Settings: the contract's defaults, and bad values failing fast with the variable's name."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from shared.declarations import PROCESSES, Process
from shared.settings import ConfigurationError, Settings

pytestmark = pytest.mark.unit


def test_defaults_are_the_contracts() -> None:
    s = Settings.from_env({})
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert (s.gateway_host, s.gateway_port) == ("127.0.0.1", 8080)
    assert (s.auth_http_port, s.users_http_port, s.posts_http_port) == (8081, 8082, 8083)
    assert s.auth_jwks_url == "http://127.0.0.1:8081/.well-known/jwks.json"
    assert s.auth_signing_key_file is None
    assert (s.jwt_issuer, s.jwt_audience) == ("auth_service", "posts-platform")
    assert s.access_token_ttl_seconds == 900


def test_the_broker_topology_is_declared_unless_told_to_verify() -> None:
    assert Settings.from_env({}).broker_topology == "declare"
    assert Settings.from_env({"BROKER_TOPOLOGY": ""}).broker_topology == "declare"
    assert Settings.from_env({"BROKER_TOPOLOGY": "verify"}).broker_topology == "verify"
    assert Settings.from_env({"BROKER_TOPOLOGY": "declare"}).broker_topology == "declare"


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings.from_env({}).gateway_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "eighty"),
        ("GATEWAY_PORT", "70000"),
        ("ACCESS_TOKEN_TTL_SECONDS", "0"),
        ("AMQP_URL", "http://broker/"),
        ("DATABASE_URL", "mysql://db/x"),
        ("AUTH_JWKS_URL", "not a url"),
        ("JWT_AUDIENCE", "  "),
        ("LOG_LEVEL", "LOUD"),
        ("RPC_TIMEOUT_SECONDS", "soon"),
        ("BROKER_TOPOLOGY", "create"),
        ("BROKER_TOPOLOGY", "passive"),
        ("GROUP_COMMIT_MAX_BATCH", "0"),
        ("GROUP_COMMIT_MAX_BATCH", "65"),
        ("GROUP_COMMIT_WRITERS", "0"),
        ("GROUP_COMMIT_WRITERS", "10"),  # as many as DATABASE_POOL_SIZE's default: none left for the relay
    ],
)
def test_a_bad_value_fails_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_broker_users_default_to_the_contracts_and_come_from_the_declarations() -> None:
    users = Settings.from_env({}).broker_users
    assert dict(users) == {"gateway": "gateway", "auth": "auth_service", "users": "users_service", "posts": "posts_service"}
    assert {p.broker_user_variable for p in PROCESSES} == {
        "BROKER_USER_GATEWAY",
        "BROKER_USER_AUTH",
        "BROKER_USER_USERS",
        "BROKER_USER_POSTS",
    }
    assert Settings.from_env({"BROKER_USER_POSTS": "zt_posts"}).broker_user("posts") == "zt_posts"


def test_two_processes_cannot_share_a_broker_user() -> None:
    with pytest.raises(ConfigurationError, match="BROKER_USER_USERS and BROKER_USER_POSTS both name 'shared'"):
        Settings.from_env({"BROKER_USER_USERS": "shared", "BROKER_USER_POSTS": "shared"})


def test_amqp_urls_user_must_be_the_processs_own() -> None:
    settings = Settings.from_env({"AMQP_URL": "amqp://posts_service:pw@127.0.0.1:5672/posts"})
    settings.check_broker_user("posts")
    with pytest.raises(
        ConfigurationError, match="AMQP_URL logs in as 'posts_service', but BROKER_USER_USERS says this process is 'users_service'"
    ):
        settings.check_broker_user("users")
    assert Settings.from_env({}).amqp_user == "guest"


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.package)
def test_a_process_on_another_processs_broker_user_does_not_start(process: Process) -> None:
    """posts_service's URL given to every process: all but posts_service stop at once, before
    they touch the database or the broker, and say why."""
    env = {
        **os.environ,
        "AMQP_URL": "amqp://posts_service:posts_service-dev@127.0.0.1:1/",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x",
    }
    if process.package == "posts_service":
        env["BROKER_USER_POSTS"] = "someone_else"
    result = subprocess.run([sys.executable, "-m", process.package], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "AMQP_URL logs in as 'posts_service'" in result.stdout + result.stderr
