"""The broker topology is defined once (shared/topology) and everything else agrees with it.

- deploy/rabbitmq/definitions.json holds exactly its exchanges, queues and bindings;
- each service's real wiring registers exactly the commands and events its queues are bound to
  (a service also checks this itself at start-up and refuses to run otherwise);
- every contract command is routed to exactly one service.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import auth_service.service
import posts_service.service
import users_service.service
from shared.commands import COMMAND_PAYLOADS, audit_command_name
from shared.database import create_pool
from shared.service import WireFn
from shared.settings import Settings
from shared.topology import ROUTES, TopologyError, as_definitions, bindings, check_wiring, command_keys
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
WIRES: dict[str, WireFn] = {
    auth_service.service.NAME: auth_service.service.wire,
    users_service.service.NAME: users_service.service.wire,
    posts_service.service.NAME: posts_service.service.wire,
}
CONTRACT_EVENTS = {"user.registered", "user.banned", "session.revoked", "post.created", "post.edited", "post.deleted"}


def canonical(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(entry, sort_keys=True) for entry in entries)


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["exchanges", "queues", "bindings"])
def test_definitions_json_holds_exactly_the_code_topology(kind: str) -> None:
    document = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    [vhost] = [v["name"] for v in document["vhosts"]]
    assert canonical(document.get(kind, [])) == canonical(as_definitions(vhost)[kind]), (
        f"deploy/rabbitmq/definitions.json's {kind} differ from shared/topology: "
        "run `python -m shared.topology definitions deploy/rabbitmq/definitions.json`"
    )


@pytest.mark.unit
def test_the_definitions_command_keeps_everything_else_and_changes_nothing_twice(tmp_path: Path) -> None:
    copy = tmp_path / "definitions.json"
    shutil.copy(DEFINITIONS, copy)
    result = subprocess.run(
        [sys.executable, "-m", "shared.topology", "definitions", str(copy)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(copy.read_text()) == json.loads(DEFINITIONS.read_text())


@pytest.mark.unit
@pytest.mark.parametrize("args", [["--help"], ["declare", "--help"], ["definitions", "--help"]])
def test_the_command_explains_itself_with_examples(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "shared.topology", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "python -m shared.topology declare" in result.stdout


@pytest.mark.unit
def test_every_contract_command_goes_to_exactly_one_service() -> None:
    routed = [key for service in ROUTES for key in ROUTES[service].commands]
    assert sorted(routed) == sorted(COMMAND_PAYLOADS), "each contract command must be bound to one command queue"
    for service in ROUTES:
        assert audit_command_name(service) in command_keys(service)
        assert set(ROUTES[service].events) <= CONTRACT_EVENTS


@pytest.mark.unit
def test_each_command_queue_is_bound_to_its_own_commands_only() -> None:
    for service in ROUTES:
        keys = {b.routing_key for b in bindings(service) if b.exchange == "commands"}
        assert {b.queue for b in bindings(service) if b.exchange == "commands"} == {f"{service}.commands"}
        assert keys == set(command_keys(service))


@pytest.mark.unit
def test_a_wiring_that_disagrees_with_the_topology_is_refused() -> None:
    check_wiring("posts", command_keys("posts"), ROUTES["posts"].events)
    with pytest.raises(TopologyError, match="posts"):
        check_wiring("posts", [*command_keys("posts"), "login"], ROUTES["posts"].events)
    with pytest.raises(TopologyError, match="posts"):
        check_wiring("posts", command_keys("posts"), [*ROUTES["posts"].events, "user.registered"])
    with pytest.raises(TopologyError, match="mail"):
        check_wiring("mail", [], [])


@pytest.mark.parametrize("service", WIRES)
async def test_each_services_real_wiring_matches_the_topology(stack: Stack, service: str) -> None:
    """The same call shared.service.serve makes, on the routes the service itself registers."""
    settings = Settings.from_env(stack.env)
    pool = await create_pool(settings.database_url, service, min_size=1, max_size=2)
    try:
        wiring = await WIRES[service](settings, pool)
    finally:
        await pool.close()
    check_wiring(service, [r.name for r in wiring.commands] + [audit_command_name(service)], [r.routing_key for r in wiring.events])
