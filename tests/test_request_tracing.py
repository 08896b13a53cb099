"""One request, followed by its request id: the gateway takes the client's X-Request-ID, returns it
in the response header and the problem+json, and every log line written for it, in the gateway
and in the service that refused it, carries it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
import structlog

from shared import logs
from tests.support.accounts import User
from tests.support.stack import Stack


def lines_with(path: Path, text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if text in line and line.startswith("{")]


async def test_a_refused_delete_is_logged_under_the_clients_request_id_in_every_hop(
    stack: Stack, http: aiohttp.ClientSession, new_user, wait_until
) -> None:
    author: User = await new_user("traced-author")
    intruder: User = await new_user("traced-intruder")
    async with http.post("/posts", json={"title": "mine", "body": "b"}, headers=author.auth) as response:
        post_id = (await response.json())["id"]
    request_id = f"trace-{uuid4().hex}"

    async with http.delete(f"/posts/{post_id}", headers={**intruder.auth, "X-Request-ID": request_id}) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
        assert response.headers["X-Request-ID"] == request_id
        assert (await response.json())["request_id"] == request_id

    async def decision() -> list[dict[str, Any]]:
        return [e for e in lines_with(stack.log_dir / "posts.log", request_id) if e["message"] == "authorization decision"]

    [entry] = await wait_until(decision, timeout=5)
    assert entry["request_id"] == request_id and entry["service"] == "posts_service"
    assert entry["decision"] == "denied" and entry["command"] == "delete-post"
    assert entry["caller"] == f"user:{intruder.id}" and entry["resource"] == f"post:{post_id}"
    # Every line the service wrote for the command is bound to the request, not just this one.
    assert all(e["request_id"] == request_id for e in lines_with(stack.log_dir / "posts.log", request_id))

    async def gateway_line() -> list[dict[str, Any]]:
        return [e for e in lines_with(stack.log_dir / "gateway.log", request_id) if e["message"] == "request failed"]

    [line] = await wait_until(gateway_line, timeout=5)
    assert line["request_id"] == request_id and line["service"] == "gateway" and line["level"] == "info"
    assert line["status"] == 403 and line["method"] == "DELETE" and line["path"] == f"/posts/{post_id}"


async def test_a_successful_request_writes_no_info_line_at_the_gateway(stack: Stack, http: aiohttp.ClientSession) -> None:
    request_id = f"quiet-{uuid4().hex}"
    async with http.get("/posts", headers={"X-Request-ID": request_id}) as response:
        assert response.status == 200 and response.headers["X-Request-ID"] == request_id
    async with http.get("/posts/not-a-uuid", headers={"X-Request-ID": request_id}) as response:
        assert response.status == 404  # written after the success, so the success had its chance to log
    async with http.get("/healthz") as response:
        assert response.status == 200
    logged = [e["status"] for e in lines_with(stack.log_dir / "gateway.log", request_id)]
    assert 200 not in logged


@pytest.fixture
def json_logging(capsys: pytest.CaptureFixture[str]):
    """The production logging set-up in this process, undone afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()


@pytest.mark.unit
def test_every_line_written_while_a_request_id_is_bound_carries_it(json_logging) -> None:
    logs.configure_logging("test_service", "INFO")
    bound = logs.bind(request_id="req-42", command="delete-post")
    logging.getLogger("aiormq.connection").warning("a third-party line, through the standard logging module")
    logging.getLogger("audit").info("authorization decision", extra={"decision": "denied", "reason": "no"})
    structlog.get_logger("native").info("a structlog line", extra_key=1)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("shared.runner").exception("command failed unexpectedly")
    logs.unbind(bound)
    logging.getLogger("shared.service").info("after the command")

    *during, after = json_logging()
    assert len(during) == 4
    for entry in during:
        assert entry["request_id"] == "req-42" and entry["command"] == "delete-post"
        assert entry["service"] == "test_service" and entry["time"].startswith("20")
        assert list(entry)[:5] == ["time", "level", "service", "logger", "message"]
    assert during[0]["logger"] == "aiormq.connection" and during[0]["level"] == "warning"
    assert during[1]["decision"] == "denied" and during[1]["reason"] == "no"
    assert during[2]["message"] == "a structlog line" and during[2]["extra_key"] == 1
    assert during[3]["level"] == "error" and "ValueError: boom" in during[3]["exception"]
    assert "request_id" not in after and after["message"] == "after the command"
