"""Every file derived from the declarations is what `python -m shared.generate` writes.

The declarations (shared/commands.py, shared/events.py) are the one place a command or an event
is stated; asyncapi.yaml, deploy/rabbitmq/definitions.json and the README's tables are written
from them. A stale one fails here, naming the command that fixes it.
"""

from __future__ import annotations

import re

import pytest

from shared import generate
from shared.commands import COMMANDS
from shared.events import EVENTS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("path", list(generate.expected()), ids=lambda p: p.name)
def test_the_committed_file_is_what_the_declarations_make(path) -> None:  # noqa: ANN001
    assert path.read_text(encoding="utf-8") == generate.expected()[path], (
        f"{path.relative_to(generate.ROOT)} is stale: run `.venv/bin/python -m shared.generate`"
    )


def test_the_readme_tables_name_every_command_and_event() -> None:
    readme = generate.README.read_text(encoding="utf-8")
    blocks = {m["name"]: m[0] for m in generate.BLOCK.finditer(readme)}
    assert set(blocks) == set(generate.TABLES), "README.md lacks a generated block"
    for name in COMMANDS:
        assert f"| `{name}` |" in blocks["commands"]
    for name in EVENTS:
        assert f"| `{name}` |" in blocks["events"]


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    stale_readme = tmp_path / "README.md"
    text = generate.README.read_text(encoding="utf-8")
    stale_readme.write_text(re.sub(r"\| `edit-post` \|.*\n", "", text), encoding="utf-8")
    monkeypatch.setattr(generate, "README", stale_readme)
    assert generate.stale() == [stale_readme]
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0
    assert generate.stale() == []
