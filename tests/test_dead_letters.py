"""Operator commands for parked messages: list shows them with the reason, replay sends them back
to where they were first published, drop removes them."""

from __future__ import annotations

import subprocess
import sys
from uuid import uuid4

import pytest

from tests.support.broker import BrokerProbe
from tests.support.stack import ROOT, Stack


def dead_letters(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.dead_letters", *args], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60
    )


async def test_list_replay_and_drop(stack: Stack, broker: BrokerProbe, wait_until) -> None:
    await broker.dead_letters("posts.commands")  # start from an empty parking lot
    message_id = str(uuid4())
    reply = await broker.command("get-post", body=b"{broken", message_id=message_id)
    assert reply is not None and reply["error"]["status"] == 400

    async def listed() -> str:
        result = dead_letters(stack, "list", "posts.commands")
        assert result.returncode == 0, result.stderr
        return result.stdout if message_id in result.stdout else ""

    listing = await wait_until(listed, timeout=3)
    assert "400 Bad Request" in listing and "routing_key=get-post" in listing

    replayed = dead_letters(stack, "replay", "posts.commands", "--id", message_id)
    assert replayed.returncode == 0 and f"replayed {message_id}" in replayed.stdout, replayed
    # Back on `commands` with its original routing key, posts_service processes it again, and a
    # message that is still malformed is parked again: replay went through the real path.
    await wait_until(listed, timeout=3)

    dropped = dead_letters(stack, "drop", "posts.commands", "--id", message_id)
    assert dropped.returncode == 0 and f"dropped {message_id}" in dropped.stdout
    after = dead_letters(stack, "list", "posts.commands")
    assert message_id not in after.stdout


def test_replay_and_drop_say_which_messages(stack: Stack) -> None:
    result = dead_letters(stack, "drop", "posts.commands")
    assert result.returncode == 1 and "--id" in result.stderr


def test_an_unknown_queue_is_a_clear_error(stack: Stack) -> None:
    result = dead_letters(stack, "list", "nobody.commands")
    assert result.returncode == 1 and "no dead-letter queue" in result.stderr


@pytest.mark.unit
def test_help_has_examples() -> None:
    result = subprocess.run([sys.executable, "-m", "shared.dead_letters", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "examples:" in result.stdout
