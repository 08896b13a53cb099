"""/openapi.json as a third-party tool reads it: redocly's recommended rules, warnings included.

redocly (clients/node, pinned by its package-lock.json) lints the document the running gateway
serves with `recommended-strict`, the recommended ruleset with every warning an error, and no
configuration of ours that could switch a rule off. The unit tests below check what redocly does
not: the headers each answer carries, explicit security on every operation, `date-time`
timestamps, and that every route the gateway serves is in it, each derived from the declarations
or the routes rather than listed by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.openapi import build_document
from gateway.read_cache import CACHED_READS
from gateway.routes import setup_routes
from shared.commands import COMMANDS
from tests.support.node import NODE_DIR, require_node

REDOCLY = NODE_DIR / "node_modules" / "@redocly" / "cli" / "bin" / "cli.js"
METHODS = {"get", "post", "put", "patch", "delete"}


async def test_the_served_document_passes_redocly_recommended_rules(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    node = require_node(minimum=(18, 17))  # what @redocly/cli 1.34 runs on (Debian bookworm has 18.19)
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document))
    # cwd is the empty temp dir, so no redocly.yaml anywhere can change the rules.
    env = {**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}
    command = [node, str(REDOCLY), "lint", "--extends", "recommended-strict", "--format", "json", str(path)]
    result = await asyncio.to_thread(subprocess.run, command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"redocly did not report (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    problems = [f"{p['ruleId']}: {p['message']} at {p['location'][0]['pointer']}" for p in report["problems"]]
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, "\n".join(problems)
    assert result.returncode == 0


# -- what redocly does not check ---------------------------------------------------------------


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in build_document()["paths"].items() for method, op in ops.items() if method in METHODS]


def resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in item:
        node: Any = document
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item


def response_headers(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    document = build_document()
    return {name.lower(): resolve(document, header) for name, header in response.get("headers", {}).items()}


@pytest.mark.unit
def test_every_operation_states_its_security_and_public_ones_say_none() -> None:
    by_route = {(c.http.path, c.http.method.lower()): c for c in COMMANDS.values() if c.http}
    for path, method, op in operations():
        assert "security" in op, f"{method} {path}"
        command = by_route.get((path, method))
        if command is not None:
            assert (op["security"] == []) == (not command.guarded), f"{method} {path}"


@pytest.mark.unit
def test_every_answer_documents_x_request_id_and_every_error_is_a_problem() -> None:
    for path, method, op in operations():
        for status, response in op["responses"].items():
            headers = response_headers(response)
            assert "x-request-id" in headers, f"{method} {path} {status}"
            # Only aiohttp's own parser refuses a request before the middleware that adds the id.
            assert headers["x-request-id"]["required"] == (status != "400"), f"{method} {path} {status}"
            if status.startswith("4") or status.startswith("5"):
                assert "application/problem+json" in response["content"], f"{method} {path} {status}"


@pytest.mark.unit
def test_401_429_and_503_document_their_headers() -> None:
    seen = set()
    for path, method, op in operations():
        for status, response in op["responses"].items():
            headers = response_headers(response)
            if status == "401":
                assert headers["www-authenticate"]["required"], f"{method} {path}"
            if status in ("429", "503"):
                # Every 429 says when to retry; a 503 does when it knows (not a shutting-down gateway).
                assert headers["retry-after"]["required"] == (status == "429"), f"{method} {path}"
            seen.add(status)
    assert {"401", "429", "503"} <= seen


@pytest.mark.unit
def test_created_resources_have_a_location_and_token_answers_no_store() -> None:
    document = build_document()
    for command in COMMANDS.values():
        if command.http is None:
            continue
        response = document["paths"][command.http.path][command.http.method.lower()]["responses"][str(command.http.status)]
        headers = response_headers(response)
        assert ("location" in headers) == (command.http.location is not None), command.name
        cache_control = headers.get("cache-control", {}).get("schema", {}).get("const")
        # Token answers are never kept; public reads are kept only to be revalidated by their ETag.
        expected = "no-store" if command.http.no_store else "no-cache" if command.name in CACHED_READS else None
        assert cache_control == expected, command.name
        assert ("etag" in headers) == (command.name in CACHED_READS), command.name
    assert any(c.http and c.http.location for c in COMMANDS.values())


@pytest.mark.unit
def test_public_reads_document_their_conditional_get() -> None:
    document = build_document()
    for name in CACHED_READS:
        http = COMMANDS[name].http
        assert http is not None
        operation = document["paths"][http.path]["get"]
        assert any(p["name"] == "If-None-Match" and p["in"] == "header" for p in operation["parameters"]), name
        assert "etag" in response_headers(operation["responses"]["304"]), name
        assert "content" not in operation["responses"]["304"], name


@pytest.mark.unit
def test_timestamps_are_date_times() -> None:
    schemas = build_document()["components"]["schemas"]
    assert schemas["Post"]["properties"]["created_at"]["format"] == "date-time"
    assert schemas["AuditEntry"]["properties"]["occurred_at"]["format"] == "date-time"


@pytest.mark.unit
def test_the_document_names_its_server_and_every_operation_has_an_id() -> None:
    document = build_document()
    assert document["servers"] == [{"url": "/", "description": "The gateway that serves this document"}]
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    assert {c.name for c in COMMANDS.values() if c.http} <= set(ids)


@pytest.mark.unit
def test_every_route_the_gateway_serves_is_documented() -> None:
    app = web.Application()
    setup_routes(app)
    served = {
        (resource.canonical, route.method.lower())
        for resource in app.router.resources()
        for route in resource
        if route.method.lower() in METHODS and not resource.canonical.startswith("/static")
    }
    documented = {(path, method) for path, method, _ in operations()}
    assert served == documented
