"""SECURITY.md names real tests: every `test_x.py` and `test_x.py::test_name` it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent
SECURITY = TESTS.parent / "SECURITY.md"


def cited() -> list[tuple[str, str | None]]:
    text = SECURITY.read_text()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"`?(test_\w+\.py)(?:::(test_\w+))?", text)]


def test_security_md_cites_tests() -> None:
    assert len(cited()) > 20


def test_every_cited_test_exists() -> None:
    missing = []
    for module, function in cited():
        path = TESTS / module
        if not path.exists():
            missing.append(module)
        elif function and not re.search(rf"^(async )?def {function}\(", path.read_text(), re.M):
            missing.append(f"{module}::{function}")
    assert not missing, f"SECURITY.md cites tests that do not exist: {sorted(set(missing))}"


def test_bare_function_names_exist_somewhere() -> None:
    """Names cited without a module (in a list after one) must still be tests somewhere."""
    text = SECURITY.read_text()
    names = set(re.findall(r"`(test_\w+)`", text))
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    missing = [n for n in names if not re.search(rf"def {n}\(", sources)]
    assert not missing, f"SECURITY.md cites tests that do not exist: {sorted(missing)}"
