"""The deployment files agree with the contract.

docker-compose.yml, the Dockerfile and the Procfile are how an operator starts the stack. These
checks read them as plain files (no Docker, no fixtures) and catch a misspelt variable, a missing
health check, a wrong start-up order, a service started with the wrong module or one that shares
another's broker user before anyone runs `docker compose up`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import pathlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from shared.declarations import PROCESSES, Process
from shared.settings import Settings

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
DEFINITIONS_IN_CONTAINER = "/etc/rabbitmq/definitions.json"

# In this project each compose service is named after the package it runs.
APP_SERVICES = ("gateway", "auth_service", "users_service", "posts_service")
INFRASTRUCTURE = ("postgres", "rabbitmq")

CONTRACT_VARIABLES = frozenset(
    {
        "AMQP_URL",
        "DATABASE_URL",
        "GATEWAY_HOST",
        "GATEWAY_PORT",
        "AUTH_HTTP_PORT",
        "USERS_HTTP_PORT",
        "POSTS_HTTP_PORT",
        "AUTH_JWKS_URL",
        "AUTH_SIGNING_KEY_FILE",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "ACCESS_TOKEN_TTL_SECONDS",
        "REFRESH_TOKEN_TTL_SECONDS",
        "SESSION_MAX_AGE_SECONDS",
        "REFRESH_REUSE_GRACE_SECONDS",
        *(process.broker_user_variable for process in PROCESSES),
    }
)
ALLOWED_VARIABLES = CONTRACT_VARIABLES | {"HTTP_HOST", "LOG_LEVEL", "BROKER_TOPOLOGY"}

# Which variable holds each service's HTTP port, and its default from the contract.
HTTP_PORTS: dict[str, tuple[str, int]] = {
    "gateway": ("GATEWAY_PORT", 8080),
    "auth_service": ("AUTH_HTTP_PORT", 8081),
    "users_service": ("USERS_HTTP_PORT", 8082),
    "posts_service": ("POSTS_HTTP_PORT", 8083),
}


@functools.cache
def load_compose() -> dict[str, Any]:
    path = ROOT / "docker-compose.yml"
    assert path.is_file(), f"{path} is missing"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), "docker-compose.yml is not a YAML mapping"
    return document


def compose_service(name: str) -> dict[str, Any]:
    services = load_compose().get("services") or {}
    assert name in services, f"docker-compose.yml has no service {name!r} (found {sorted(services)})"
    service = services[name]
    assert isinstance(service, dict), f"service {name!r} is not a mapping"
    return service


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a mapping, whichever of the two compose forms it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, dict):
        return {str(key): "" if value is None else str(value) for key, value in raw.items()}
    pairs = (str(item).partition("=") for item in raw)
    return {key: value for key, _, value in pairs}


def bind_mounts(service: dict[str, Any]) -> dict[str, pathlib.Path]:
    """Container path -> host file, for the service's bind mounts in either compose form."""
    mounts: dict[str, pathlib.Path] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume.get("target", ""))
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.partition(":")[0]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


@functools.cache
def load_definitions() -> dict[str, Any]:
    assert DEFINITIONS.is_file(), f"{DEFINITIONS} is missing"
    return json.loads(DEFINITIONS.read_text(encoding="utf-8"))


def password_matches(user: dict[str, Any], password: str) -> bool:
    """RabbitMQ's sha256 scheme: base64(salt + sha256(salt + password)), with a 4-byte salt."""
    assert user.get("hashing_algorithm") == "rabbit_password_hashing_sha256", (
        f"broker user {user.get('name')!r} should use rabbit_password_hashing_sha256"
    )
    raw = base64.b64decode(user["password_hash"])
    return len(raw) == 36 and hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def words(value: str | list[Any]) -> list[str]:
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or []
    return " ".join(words(test))


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_infrastructure_has_a_healthcheck(name: str) -> None:
    text = healthcheck_text(compose_service(name))
    assert text, f"{name} has no healthcheck, so nothing can wait for it to be ready"
    assert "NONE" not in text.split(), f"{name} disables its healthcheck"


def test_postgres_healthcheck_uses_pg_isready() -> None:
    text = healthcheck_text(compose_service("postgres"))
    assert "pg_isready" in text, f"postgres healthcheck should run pg_isready, runs {text!r}"


def test_rabbitmq_healthcheck_pings_the_node() -> None:
    text = healthcheck_text(compose_service("rabbitmq"))
    assert "rabbitmq-diagnostics" in text, f"rabbitmq healthcheck should run rabbitmq-diagnostics, runs {text!r}"


def test_postgres_keeps_data_on_a_named_volume() -> None:
    declared = load_compose().get("volumes") or {}
    mounts = [str(mount) for mount in compose_service("postgres").get("volumes") or []]
    named = [mount for mount in mounts if mount.partition(":")[0] in declared]
    assert any(mount.endswith(":/var/lib/postgresql/data") for mount in named), (
        f"postgres should mount a named volume at /var/lib/postgresql/data, mounts {mounts} with top-level volumes {sorted(declared)}"
    )


def test_rabbitmq_imports_the_definitions_at_boot() -> None:
    rabbitmq = compose_service("rabbitmq")
    mounts = bind_mounts(rabbitmq)
    assert mounts.get(DEFINITIONS_IN_CONTAINER) == DEFINITIONS, (
        f"rabbitmq should mount {DEFINITIONS.relative_to(ROOT)} at {DEFINITIONS_IN_CONTAINER}, mounts {mounts}"
    )
    configs = [
        source
        for target, source in mounts.items()
        if target == "/etc/rabbitmq/rabbitmq.conf" or (target.startswith("/etc/rabbitmq/conf.d/") and target.endswith(".conf"))
    ]
    loads = [
        config
        for config in configs
        if config.is_file() and f"load_definitions = {DEFINITIONS_IN_CONTAINER}" in config.read_text(encoding="utf-8").splitlines()
    ]
    assert loads, f"no mounted rabbitmq config file says 'load_definitions = {DEFINITIONS_IN_CONTAINER}' (mounted: {configs})"
    defaults = sorted(key for key in environment_of(rabbitmq) if key.startswith("RABBITMQ_DEFAULT_"))
    assert not defaults, f"rabbitmq sets {defaults}: a default user would be an all-powerful account beside the least-privilege ones"


def test_broker_users_are_exactly_the_app_services_and_none_is_tagged() -> None:
    users = {user["name"]: user for user in load_definitions().get("users", [])}
    assert sorted(users) == sorted(APP_SERVICES), f"definitions.json should define one user per process, defines {sorted(users)}"
    tagged = {name: user.get("tags") for name, user in users.items() if user.get("tags") not in ([], "")}
    assert not tagged, f"process users need no tags (management, administrator...): {tagged}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_connects_to_the_broker_as_its_own_user(name: str) -> None:
    url = urlsplit(environment_of(compose_service(name)).get("AMQP_URL", ""))
    assert url.username == name, f"{name} connects to RabbitMQ as {url.username!r}; each process has its own user, named after it"
    users = {user["name"]: user for user in load_definitions().get("users", [])}
    assert name in users, f"definitions.json has no user {name!r}"
    assert password_matches(users[name], unquote(url.password or "")), (
        f"{name}'s AMQP_URL password does not match its password_hash in definitions.json"
    )
    vhost = unquote(url.path.removeprefix("/")) or "/"
    assert vhost in [v["name"] for v in load_definitions().get("vhosts", [])], f"definitions.json does not define vhost {vhost!r}"
    granted = [p for p in load_definitions().get("permissions", []) if (p["user"], p["vhost"]) == (name, vhost)]
    assert len(granted) == 1, f"definitions.json should grant {name} permissions on vhost {vhost!r} once, grants {granted}"
    topics = [p for p in load_definitions().get("topic_permissions", []) if (p["user"], p["vhost"]) == (name, vhost)]
    assert [p["exchange"] for p in topics] == ["events"], f"{name} should have topic permissions on 'events' only, has {topics}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_only_verifies_the_broker_topology(name: str) -> None:
    value = environment_of(compose_service(name)).get("BROKER_TOPOLOGY")
    assert value == "verify", (
        f"{name} sets BROKER_TOPOLOGY={value!r}; definitions.json creates the topology at boot and the "
        "least-privilege users may not declare it, so every process must run with BROKER_TOPOLOGY=verify"
    )


def test_no_process_user_may_configure_or_read_an_exchange() -> None:
    """Verify mode's grants: nothing shared to declare, bind or delete, and no read on `commands`
    to bind from. The one exception is the gateway's own exclusive queue of the public events."""
    for permission in load_definitions().get("permissions", []):
        live = permission["user"] == "gateway"
        assert permission["configure"] == (r"^gateway\.live\." if live else "^$"), (
            f"{permission['user']} may configure {permission['configure']!r}"
        )
        for exchange in ("commands", "dead-letters", "amq.default", *(() if live else ("events",))):
            assert not re.search(permission["read"], exchange), f"{permission['user']} may read (bind from) {exchange!r}"
        for shared in ("commands", "events", "dead-letters", "posts.commands", "gateway.events.dead"):
            assert not re.search(permission["configure"], shared), f"{permission['user']} may configure {shared!r}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_is_built_from_the_repository_dockerfile(name: str) -> None:
    build = compose_service(name).get("build")
    assert build is not None, f"{name} has no build section; every service is built from ./Dockerfile"
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context"), build.get("dockerfile", "Dockerfile")
    assert context in {".", "./"}, f"{name} is built from context {context!r}, expected the repository root '.'"
    assert dockerfile == "Dockerfile", f"{name} is built from {dockerfile!r}, expected the shared Dockerfile"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_its_own_package(name: str) -> None:
    command = compose_service(name).get("command")
    assert command is not None, f"{name} has no command, so it would run the image's default (the gateway)"
    assert words(command) == ["python", "-m", name], f"{name} runs {command!r}, expected 'python -m {name}'"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_healthy_dependencies(name: str) -> None:
    depends_on = compose_service(name).get("depends_on") or {}
    assert isinstance(depends_on, dict), f"{name} lists depends_on without conditions; it would start before its dependencies are ready"
    needed = list(INFRASTRUCTURE) + ([] if name == "auth_service" else ["auth_service"])
    for dependency in needed:
        assert dependency in depends_on, f"{name} does not depend on {dependency}"
        condition = (depends_on[dependency] or {}).get("condition")
        assert condition == "service_healthy", f"{name} waits for {dependency} with condition {condition!r}, expected 'service_healthy'"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_healthcheck_hits_its_healthz(name: str) -> None:
    service = compose_service(name)
    text = healthcheck_text(service)
    assert text, f"{name} has no healthcheck"
    variable, default = HTTP_PORTS[name]
    port = environment_of(service).get(variable) or str(default)
    assert f":{port}/healthz" in text, f"{name} healthcheck should request port {port} /healthz, runs {text!r}"
    assert "python" in text.split(), f"{name} healthcheck should use python (the slim image has no curl), runs {text!r}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_reaches_broker_and_database_by_service_name(name: str) -> None:
    environment = environment_of(compose_service(name))
    for variable, host in (("AMQP_URL", "rabbitmq"), ("DATABASE_URL", "postgres")):
        assert variable in environment, f"{name} does not set {variable}"
        actual = urlsplit(environment[variable]).hostname
        assert actual == host, f"{name} {variable} points at host {actual!r}, expected {host!r}"


@pytest.mark.parametrize("name", ["gateway", "users_service", "posts_service"])
def test_app_service_fetches_keys_from_auth_service(name: str) -> None:
    url = environment_of(compose_service(name)).get("AUTH_JWKS_URL")
    assert url, f"{name} does not set AUTH_JWKS_URL; the default 127.0.0.1 does not reach auth_service in a container"
    parts = urlsplit(url)
    assert (parts.hostname, parts.path) == ("auth_service", "/.well-known/jwks.json"), (
        f"{name} AUTH_JWKS_URL is {url!r}, expected http://auth_service:<port>/.well-known/jwks.json"
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_listens_on_all_interfaces(name: str) -> None:
    variable = "GATEWAY_HOST" if name == "gateway" else "HTTP_HOST"
    value = environment_of(compose_service(name)).get(variable)
    assert value == "0.0.0.0", f"{name} sets {variable}={value!r}; it must be 0.0.0.0 to be reachable in a container"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_uses_only_known_variables(name: str) -> None:
    unknown = sorted(set(environment_of(compose_service(name))) - ALLOWED_VARIABLES)
    assert not unknown, f"{name} sets variables the services do not read (typo?): {unknown}"


def test_gateway_publishes_port_8080() -> None:
    published: list[tuple[str, str]] = []
    for port in compose_service("gateway").get("ports") or []:
        if isinstance(port, dict):
            published.append((str(port.get("published", "")), str(port.get("target", ""))))
        else:
            *outside, inside = str(port).split(":")
            published.append((outside[-1] if outside else "", inside.partition("/")[0]))
    assert ("8080", "8080") in published, f"gateway should publish 8080:8080, publishes {published}"


def test_procfile_starts_every_service() -> None:
    path = ROOT / "Procfile"
    assert path.is_file(), f"{path} is missing"
    commands: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, command = line.partition(":")
            assert separator, f"Procfile line {line!r} is not 'name: command'"
            commands[name.strip()] = " ".join(command.split())
    for process in PROCESSES:
        own_url = f'env AMQP_URL="${{{process.name.upper()}_AMQP_URL:-$AMQP_URL}}" python -m {process.package}'
        assert own_url in commands.values(), (
            f"Procfile should run {process.package} with its own broker user's URL ({own_url!r}); it runs {sorted(commands.values())}"
        )


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.package)
def test_each_process_is_told_its_own_broker_user_and_connects_as_it(process: Process) -> None:
    """What the process checks at start-up: AMQP_URL's user is its BROKER_USER_* (and, from the
    same settings, the other processes' users, so it knows who published what)."""
    settings = Settings.from_env(environment_of(compose_service(process.package)))
    settings.check_broker_user(process.name)
    for other in PROCESSES:
        assert settings.broker_user(other.name) == other.package, f"{process.package} would not recognise {other.package}'s messages"


def test_dockerfile_runs_as_non_root_user() -> None:
    path = ROOT / "Dockerfile"
    assert path.is_file(), f"{path} is missing"
    users = re.findall(r"^\s*USER\s+(\S+)", path.read_text(encoding="utf-8"), flags=re.IGNORECASE | re.MULTILINE)
    assert users, "Dockerfile has no USER instruction, so the services would run as root"
    last = users[-1].partition(":")[0]
    assert last not in {"root", "0"}, f"Dockerfile's final USER is {users[-1]!r}, the services would run as root"
