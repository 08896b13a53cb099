"""The Kubernetes manifests in deploy/: every service deployed with probes, resources and config
from the ConfigMap and Secrets, never a secret value inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.declarations import PROCESSES, Process
from shared.settings import Settings

pytestmark = pytest.mark.unit

KUBE = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
SERVICES = {"gateway": 8080, "auth_service": 8081, "users_service": 8082, "posts_service": 8083}


def documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBE.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for doc in documents():
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            found[container["command"][-1]] = doc
    return found


def test_every_service_has_a_deployment() -> None:
    assert set(deployments()) == set(SERVICES)


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_a_deployment_has_probes_resources_and_config(package: str) -> None:
    doc = deployments()[package]
    spec = doc["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == ["python", "-m", package]
    assert container["ports"][0]["containerPort"] == SERVICES[package]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert {"configMapRef": {"name": "posts-platform-config"}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    for secret in ("AMQP_URL", "DATABASE_URL"):
        assert "secretKeyRef" in env[secret]["valueFrom"], f"{package}: {secret} must come from a Secret"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert doc["spec"]["replicas"] >= 2


def test_auth_service_signs_with_a_mounted_key() -> None:
    spec = deployments()["auth_service"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    key_file = {e["name"]: e for e in container["env"]}["AUTH_SIGNING_KEY_FILE"]["value"]
    mount = container["volumeMounts"][0]
    assert key_file.startswith(mount["mountPath"]) and mount["readOnly"] is True
    assert spec["volumes"][0]["secret"]["secretName"] == "auth-signing-key"


def test_the_config_map_uses_only_known_variables() -> None:
    config = next(d for d in documents() if d["kind"] == "ConfigMap")["data"]
    known = {
        "HTTP_HOST",
        "GATEWAY_HOST",
        "GATEWAY_PORT",
        "AUTH_HTTP_PORT",
        "USERS_HTTP_PORT",
        "POSTS_HTTP_PORT",
        "AUTH_JWKS_URL",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "ACCESS_TOKEN_TTL_SECONDS",
        "REFRESH_TOKEN_TTL_SECONDS",
        "SESSION_MAX_AGE_SECONDS",
        "REFRESH_REUSE_GRACE_SECONDS",
        "LOG_LEVEL",
        "BROKER_TOPOLOGY",
        *(process.broker_user_variable for process in PROCESSES),
    }
    assert set(config) <= known
    assert config["AUTH_JWKS_URL"].startswith("http://auth-service:8081/")


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.package)
def test_each_process_connects_as_the_broker_user_the_config_names(process: Process) -> None:
    """The user in its AMQP_URL (secret.example.yaml) is its BROKER_USER_* (config.yaml): what the
    process checks at start-up, and how the others know its messages."""
    config = next(d for d in documents() if d["kind"] == "ConfigMap")["data"]
    secrets = next(d for d in documents() if d["kind"] == "Secret" and d["metadata"]["name"] == "posts-platform-secrets")["stringData"]
    container = deployments()[process.package]["spec"]["template"]["spec"]["containers"][0]
    key = {e["name"]: e for e in container["env"]}["AMQP_URL"]["valueFrom"]["secretKeyRef"]["key"]
    settings = Settings.from_env({**config, "AMQP_URL": secrets[key]})
    settings.check_broker_user(process.name)
    assert settings.broker_user(process.name) == process.package
