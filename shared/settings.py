"""Settings read once from the environment into a frozen object.

Every process builds one `Settings` at start-up with `Settings.from_env()` and passes it into the
factories that need it; nothing reads `os.environ` anywhere else. Bad values fail fast with a
message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from shared.broker import broker_urls, login_user
from shared.database_url import SESSION_ATTRIBUTES_VARIABLE, DatabaseUrlError, parse_database_url, redacted
from shared.declarations import PROCESSES
from shared.group_commit import DEFAULT_MAX_BATCH, DEFAULT_WRITERS, MAX_BATCH_LIMIT

#: How a process meets the broker topology (shared/topology): create it, or only check it exists.
BrokerTopology = Literal["declare", "verify"]
BROKER_TOPOLOGIES: tuple[BrokerTopology, ...] = ("declare", "verify")


class ConfigurationError(ValueError):
    """An environment variable holds a value the system cannot run with."""


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name) or default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigurationError(f"{name} must be a {' or '.join(schemes)} URL, got {value!r}")
    return value


def _database_url(env: Mapping[str, str], default: str) -> str:
    """One PostgreSQL host, or several with target_session_attrs (shared/database_url.py)."""
    value = env.get("DATABASE_URL") or default
    try:
        parse_database_url(value, env.get(SESSION_ATTRIBUTES_VARIABLE))
    except DatabaseUrlError as exc:
        raise ConfigurationError(f"DATABASE_URL {exc}, got {redacted(value)!r}") from None
    return value


def _amqp_urls(env: Mapping[str, str], default: str) -> str:
    """AMQP_URL: one broker, or several comma-separated (a cluster's nodes: the same user and vhost)."""
    value = env.get("AMQP_URL") or default
    try:
        broker_urls(value)
    except ValueError as exc:
        raise ConfigurationError(f"AMQP_URL must be an amqp or amqps URL, or several separated by commas: {exc}") from None
    return value


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise ConfigurationError(f"{name} must not be empty")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process of this system is configured with."""

    #: One broker URL, or several comma-separated (shared.broker.broker_urls; shared.broker_failover).
    amqp_url: str
    database_url: str
    gateway_host: str
    gateway_port: int
    http_host: str
    auth_http_port: int
    users_http_port: int
    posts_http_port: int
    auth_jwks_url: str
    auth_signing_key_file: str | None
    jwt_issuer: str
    jwt_audience: str
    access_token_ttl_seconds: int
    #: How long an unused refresh token stays valid (the session's idle lifetime).
    refresh_token_ttl_seconds: int
    #: A session's absolute lifetime, however often it is refreshed.
    session_max_age_seconds: int
    #: How long after its first use a refresh token is still answered (two tabs refreshing at once); 0: never.
    refresh_reuse_grace_seconds: int
    rpc_timeout_seconds: float
    prefetch_count: int
    database_pool_size: int
    #: Group commit (shared/group_commit.py): commands that may share one transaction (1 turns it
    #: off), and how many command transactions (batches, or commands alone) run at once.
    group_commit_max_batch: int
    group_commit_writers: int
    max_message_bytes: int
    login_max_failures_per_account: int
    login_max_failures_per_address: int
    login_window_seconds: int
    register_max_per_address: int
    register_max_global: int
    register_window_seconds: int
    #: The gateway's cache of public reads (gateway/read_cache.py): entries (0 turns it off) and body bytes.
    read_cache_max_entries: int
    read_cache_max_bytes: int
    log_level: str
    broker_topology: BrokerTopology
    #: The gateway's `GET /live`: seconds between heartbeats on an idle stream, and how many streams may be open.
    live_heartbeat_seconds: float
    live_max_streams: int
    #: By process name (`gateway`, `auth`, ...), the RabbitMQ user it connects as (BROKER_USER_*).
    broker_users: Mapping[str, str]

    @property
    def amqp_user(self) -> str:
        """The user AMQP_URL logs in as (aio-pika's default when the URL names none)."""
        return login_user(self.amqp_url)

    def broker_user(self, process: str) -> str:
        """The RabbitMQ user of `process`: the `user_id` on every message it publishes."""
        return self.broker_users[process]

    def check_broker_user(self, process: str) -> None:
        """Refuse to run `process` on another process's broker user: RabbitMQ closes the channel of
        a publish whose `user_id` is not the connection's user, and consumers park what `process`
        publishes unless it comes from `process`'s user, so a mix-up must stop start-up, not a send."""
        variable = next(p.broker_user_variable for p in PROCESSES if p.name == process)
        if self.amqp_user != self.broker_user(process):
            raise ConfigurationError(
                f"AMQP_URL logs in as {self.amqp_user!r}, but {variable} says this process is {self.broker_user(process)!r}: "
                f"give {process} its own user's AMQP_URL (scripts/broker-permissions creates the users), or set {variable}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_level = env.get("LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigurationError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        key_file = env.get("AUTH_SIGNING_KEY_FILE") or None
        topology = (env.get("BROKER_TOPOLOGY") or "declare").strip().lower()
        if topology not in BROKER_TOPOLOGIES:
            raise ConfigurationError(f"BROKER_TOPOLOGY must be declare or verify, got {topology!r}")
        pool_size = _int(env, "DATABASE_POOL_SIZE", 10, low=2, high=1_000)
        return cls(
            amqp_url=_amqp_urls(env, "amqp://guest:guest@127.0.0.1:5672/"),
            database_url=_database_url(env, "postgresql://postgres@127.0.0.1:5432/postgres"),
            gateway_host=_text(env, "GATEWAY_HOST", "127.0.0.1"),
            gateway_port=_int(env, "GATEWAY_PORT", 8080, low=0, high=65535),
            http_host=_text(env, "HTTP_HOST", "127.0.0.1"),
            auth_http_port=_int(env, "AUTH_HTTP_PORT", 8081, low=0, high=65535),
            users_http_port=_int(env, "USERS_HTTP_PORT", 8082, low=0, high=65535),
            posts_http_port=_int(env, "POSTS_HTTP_PORT", 8083, low=0, high=65535),
            auth_jwks_url=_url(env, "AUTH_JWKS_URL", "http://127.0.0.1:8081/.well-known/jwks.json", ("http", "https")),
            auth_signing_key_file=key_file,
            jwt_issuer=_text(env, "JWT_ISSUER", "auth_service"),
            jwt_audience=_text(env, "JWT_AUDIENCE", "posts-platform"),
            access_token_ttl_seconds=_int(env, "ACCESS_TOKEN_TTL_SECONDS", 900, low=1, high=86_400),
            refresh_token_ttl_seconds=_int(env, "REFRESH_TOKEN_TTL_SECONDS", 1_209_600, low=1, high=31_536_000),
            session_max_age_seconds=_int(env, "SESSION_MAX_AGE_SECONDS", 2_592_000, low=1, high=31_536_000),
            refresh_reuse_grace_seconds=_int(env, "REFRESH_REUSE_GRACE_SECONDS", 5, low=0, high=300),
            rpc_timeout_seconds=_float(env, "RPC_TIMEOUT_SECONDS", 10.0, low=0.1, high=300.0),
            prefetch_count=_int(env, "PREFETCH_COUNT", 32, low=1, high=10_000),
            database_pool_size=pool_size,
            group_commit_max_batch=_int(env, "GROUP_COMMIT_MAX_BATCH", DEFAULT_MAX_BATCH, low=1, high=MAX_BATCH_LIMIT),
            # Each writer holds a connection of the pool; the relay and lone audit rows need one too.
            group_commit_writers=_int(env, "GROUP_COMMIT_WRITERS", DEFAULT_WRITERS, low=1, high=pool_size - 1),
            max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 1_048_576, low=1024, high=64 * 1_048_576),
            login_max_failures_per_account=_int(env, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 5, low=1, high=10_000),
            login_max_failures_per_address=_int(env, "LOGIN_MAX_FAILURES_PER_ADDRESS", 20, low=1, high=100_000),
            login_window_seconds=_int(env, "LOGIN_WINDOW_SECONDS", 300, low=1, high=86_400),
            register_max_per_address=_int(env, "REGISTER_MAX_PER_ADDRESS", 10, low=1, high=1_000_000),
            register_max_global=_int(env, "REGISTER_MAX_GLOBAL", 1000, low=1, high=1_000_000),
            register_window_seconds=_int(env, "REGISTER_WINDOW_SECONDS", 3600, low=1, high=86_400),
            read_cache_max_entries=_int(env, "READ_CACHE_MAX_ENTRIES", 10_000, low=0, high=10_000_000),
            read_cache_max_bytes=_int(env, "READ_CACHE_MAX_BYTES", 64 * 1_048_576, low=0, high=16 * 1024 * 1_048_576),
            log_level=log_level,
            broker_topology=topology,
            live_heartbeat_seconds=_float(env, "LIVE_HEARTBEAT_SECONDS", 15.0, low=0.1, high=300.0),
            live_max_streams=_int(env, "LIVE_MAX_STREAMS", 1000, low=1, high=100_000),
            broker_users=_broker_users(env),
        )


def _broker_users(env: Mapping[str, str]) -> dict[str, str]:
    """BROKER_USER_* by process, each a different user: two processes sharing one could publish
    each other's events, and no consumer could tell them apart."""
    users = {p.name: _text(env, p.broker_user_variable, p.default_broker_user) for p in PROCESSES}
    for process in PROCESSES:
        shared = [p.broker_user_variable for p in PROCESSES if p is not process and users[p.name] == users[process.name]]
        if shared:
            raise ConfigurationError(
                f"{process.broker_user_variable} and {shared[0]} both name {users[process.name]!r}: each process needs a broker user of its own"
            )
    return users
