"""Rewrite every file derived from the declarations, or check that none is stale.

    python -m shared.generate           rewrite asyncapi.yaml, deploy/rabbitmq/definitions.json
                                        and the README's tables of commands and events
    python -m shared.generate --check   exit 1, naming each stale file, if any differs

The declarations are `shared.commands.COMMANDS` and `shared.events.EVENTS`; after changing one,
run this once. tests/test_generated.py runs the check, so a stale file fails the suite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared import asyncapi
from shared.commands import COMMANDS
from shared.events import EVENTS
from shared.topology import as_definitions, permission_definitions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
#: A generated block in the README: `<!-- generated: NAME -->` … `<!-- /generated -->`.
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z-]+) -->\n).*?(<!-- /generated -->)", re.DOTALL)


def _code(text: str) -> str:
    return f"`{text}`"


def commands_table() -> str:
    rows = ["| command | service | HTTP | who may | emits |", "| --- | --- | --- | --- | --- |"]
    for c in COMMANDS.values():
        http = f"`{c.http.method} {c.http.path}` → {c.http.status}" if c.http else "broker only"
        emits = ", ".join(map(_code, c.emits)) or "—"
        read = " (public read)" if c.public_read else ""
        rows.append(f"| `{c.name}` | {c.service.package} | {http} | {c.policy.describe()}{read} | {emits} |")
    return "\n".join(rows) + "\n"


def events_table() -> str:
    rows = ["| event | published by | heard by | what |", "| --- | --- | --- | --- |"]
    for e in EVENTS.values():
        heard = ", ".join(s.package for s in e.consumers) or "—"
        rows.append(f"| `{e.name}` | {e.owner.package} | {heard} | {e.summary} |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[], str]] = {"commands": commands_table, "events": events_table}


def readme(current: str) -> str:
    """The README with each generated block rewritten."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"README.md has a generated block {name!r} that nothing generates")
        return f"{match[1]}{TABLES[name]()}{match[3]}"

    return BLOCK.sub(fill, current)


def definitions(current: str) -> str:
    """definitions.json with its topology and permissions rewritten; its vhost and users kept."""
    document = json.loads(current)
    vhosts = [vhost["name"] for vhost in document.get("vhosts", [])]
    if len(vhosts) != 1:
        raise ValueError(f"{DEFINITIONS} should define exactly one vhost, defines {vhosts}")
    document.update(as_definitions(vhosts[0]))
    document.update(permission_definitions(vhosts[0]))
    return json.dumps(document, indent=2) + "\n"


def expected() -> dict[Path, str]:
    """Every generated file as the declarations make it."""
    return {
        asyncapi.DOCUMENT: asyncapi.render(),
        DEFINITIONS: definitions(DEFINITIONS.read_text(encoding="utf-8")),
        README: readme(README.read_text(encoding="utf-8")),
    }


def stale() -> list[Path]:
    return [path for path, text in expected().items() if path.read_text(encoding="utf-8") != text]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        for path in found:
            print(f"stale: {_shown(path)} (run `python -m shared.generate`)", file=sys.stderr)
        return 1 if found else 0
    for path, text in expected().items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
