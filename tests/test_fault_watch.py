"""The fault tests' watch itself (tests/support/faults.py): it fails on what it should, shows the
offending lines, and lets through only what a fault explains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.faults import BROKER_RESTART, FaultWatch

pytestmark = pytest.mark.unit


def line(level: str, logger: str, message: str, **extra: object) -> str:
    return json.dumps({"time": "2026-12-02T00:00:00Z", "level": level, "service": "gateway", "logger": logger, "message": message, **extra})


FORCED_CLOSE = line(
    "error",
    "aiormq.connection",
    'Unexpected connection close from remote "amqp://guest:******@127.0.0.1:5672/v", '
    "Connection.Close(reply_code=320, reply_text=\"CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'\")",
)
REFUSED = line("error", "aiormq.connection", "error when creating transport: <AMQPConnectionError: (111, 'Connection refused')>")
EARLY_REOPEN = line(
    "error",
    "aio_pika.tools",
    "Callback <OneShotCallback: cb=<bound method RobustChannel._on_close of <aio_pika.robust_channel.RobustChannel object at 0x7f00>>>"
    " error: ChannelInvalidStateError: No active transport in channel",
)


def watched(tmp_path: Path, *lines: str, before: str = "") -> FaultWatch:
    log = tmp_path / "gateway.log"
    log.write_text(before)
    watch = FaultWatch(tmp_path)
    with log.open("a") as out:
        out.writelines(f"{text}\n" for text in lines)
    return watch


def test_what_a_broker_restart_explains_passes(tmp_path: Path) -> None:
    watch = watched(tmp_path, FORCED_CLOSE, REFUSED, EARLY_REOPEN, line("warning", "shared.outbox", "outbox relay paused"))
    watch.expect(*BROKER_RESTART)
    watch.saw(503)
    watch.saw(504)
    watch.check()


def test_the_same_lines_fail_a_test_whose_fault_does_not_explain_them(tmp_path: Path) -> None:
    watch = watched(tmp_path, FORCED_CLOSE, REFUSED)
    with pytest.raises(AssertionError, match="2 unexplained"):
        watch.check()


@pytest.mark.parametrize(
    "offending",
    [
        line("error", "gateway.middlewares", "unhandled error in the gateway", exception="Exception"),
        line("critical", "shared.runner", "anything at all"),
        line("info", "gateway.middlewares", "request failed", status=500),
        line("error", "aiormq.connection", "error when creating transport: <AMQPConnectionError: (403, 'ACCESS_REFUSED')>"),
        line("error", "asyncio", "Future exception was never retrieved"),
        "Traceback (most recent call last):",
    ],
    ids=["unhandled", "critical", "a 500 logged", "not refused but denied", "asyncio", "not JSON"],
)
def test_an_unexplained_line_fails_and_is_shown(tmp_path: Path, offending: str) -> None:
    watch = watched(tmp_path, FORCED_CLOSE, offending)
    watch.expect(*BROKER_RESTART)
    with pytest.raises(AssertionError) as failed:
        watch.check()
    assert offending[:100] in str(failed.value)


def test_a_500_a_client_saw_fails(tmp_path: Path) -> None:
    watch = watched(tmp_path)
    watch.saw(503)
    watch.saw(500, "POST /posts")
    with pytest.raises(AssertionError, match=r"answered 500 \(POST /posts\)"):
        watch.check()


def test_only_lines_written_during_the_test_count(tmp_path: Path) -> None:
    earlier = line("error", "gateway.middlewares", "unhandled error in the gateway") + "\n"
    watch = watched(tmp_path, REFUSED, before=earlier)
    watch.expect(*BROKER_RESTART)
    watch.check()
