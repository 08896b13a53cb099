"""The README tells the truth: its curl session is what the server sends today, and every link in
the repository's documents resolves to a file inside the repository.

The session is the one docs/tour.py writes into README.md (tests/support/tour.py); here it runs
against the test stack and the two outputs are compared with their run-specific values (ids,
tokens, request ids, times) masked, so a changed field, header, status or detail fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from tests.support import tour
from tests.support.accounts import User
from tests.support.backends import Backends
from tests.support.broker import BrokerProbe
from tests.support.stack import ROOT, Stack

#: Markdown links and images: [text](target) or ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def documents() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed]


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="the tour needs curl and jq")
async def test_the_readme_tour_is_what_the_server_sends(stack: Stack) -> None:
    live = tour.run(stack.gateway_url, stack.env)
    shown = tour.readme_output((ROOT / "README.md").read_text())
    assert tour.masked(shown) == tour.masked(live), (
        "README.md's tour is not what the server sends; run `.venv/bin/python docs/tour.py` to rewrite it.\n"
        f"--- README\n{shown}\n--- live\n{live}"
    )


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


async def test_the_readme_client_example_runs_as_written(backends: Backends, stack: Stack, db: asyncpg.Pool, new_user) -> None:
    """The first example of "Publishing a command from an internal service", with only the broker
    URL (this run's vhost) and the token filled in, creates a post and prints its id."""
    section = readme_section("Publishing a command from an internal service")
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    user: User = await new_user("readme-client")
    code = re.sub(r'"amqp://[^"]*"', repr(backends.amqp_url), example.group(1), count=1)
    code = code.replace("main(TOKEN)", f"main({user.token!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    post_id = UUID(result.stdout.strip())
    assert await db.fetchval("SELECT author_id::text FROM posts.posts WHERE id = $1", post_id) == user.id


async def test_the_readme_refusal_reply_is_what_the_service_sends(http: aiohttp.ClientSession, broker: BrokerProbe, new_user) -> None:
    section = readme_section("Publishing a command from an internal service")
    shown = re.search(r"or `(\{\"ok\": false.*?\}\})`", section, re.DOTALL)
    assert shown is not None, "the refusal reply is no longer in the README"
    alice: User = await new_user("readme-alice")
    bob: User = await new_user("readme-bob")
    async with http.post("/posts", json={"title": "Mine", "body": "b"}, headers=alice.auth) as response:
        assert response.status == 201
        post_id = (await response.json())["id"]
    reply = await broker.command("delete-post", {"post_id": post_id}, token=bob.token)
    assert reply == json.loads(shown.group(1).replace("\n", " "))


@pytest.mark.unit
def test_masking_keeps_what_a_reader_relies_on() -> None:
    """The comparison must not be blind: a changed status, field or detail still differs."""
    shown = tour.readme_output((ROOT / "README.md").read_text())
    assert tour.masked(shown) != tour.masked(shown.replace("403 Forbidden", "404 Not Found"))
    assert tour.masked(shown) != tour.masked(shown.replace('"token_type"', '"kind"'))
    assert tour.masked(shown).count("<id>") >= 3 and "<token>" in tour.masked(shown)


@pytest.mark.unit
@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^(https?:|mailto:|#)", target):
            continue
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    # A path named in code spans counts too when it climbs out of the repository.
    broken += [found for found in re.findall(r"`(\.\./[^`\s]+)`", text) if not (document.parent / found).resolve().is_relative_to(ROOT)]
    assert not broken, f"{document.relative_to(ROOT)} points outside the repository or at nothing: {broken}"


@pytest.mark.unit
def test_the_contract_in_docs_is_the_teams() -> None:
    """docs/CONTRACT.md is the wire contract shipped with the code; where the team's copy sits
    beside the checkout (as in CI), the two must be the same text."""
    team = ROOT.parent / "shared" / "CONTRACT.md"
    if not team.exists():
        pytest.skip("no team contract beside this checkout")
    assert (ROOT / "docs" / "CONTRACT.md").read_text() == team.read_text(), "copy ../shared/CONTRACT.md to docs/CONTRACT.md"
