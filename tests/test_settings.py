"""Settings: the contract's defaults, and bad values failing fast with the variable's name."""

from __future__ import annotations

import dataclasses

import pytest

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
    ],
)
def test_a_bad_value_fails_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})
