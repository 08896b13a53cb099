"""Roles are defined once (shared/roles.py); what cannot import them is held to them here."""

from __future__ import annotations

import re

import pytest

from auth_service.cli import build_parser
from auth_service.service import MIGRATIONS
from shared.results import Account
from shared.roles import ROLES

pytestmark = pytest.mark.unit


def test_the_accounts_table_allows_exactly_the_roles() -> None:
    """SQL cannot import the enum: the CHECK of the newest migration that states it must match."""
    checks = [
        re.findall(r"'([a-z_]+)'", found)
        for path in sorted(MIGRATIONS.glob("*.sql"))
        for found in re.findall(r"CHECK \(role IN \(([^)]*)\)\)", path.read_text(encoding="utf-8"))
    ]
    assert checks, "no CHECK on the accounts' role found in auth_service's migrations"
    assert tuple(checks[-1]) == ROLES, "add a migration that changes the CHECK to the roles of shared/roles.py"


def test_operator_commands_offer_exactly_the_roles() -> None:
    parser = build_parser()
    for argv in (["set-role", "a@example.com", "owner"], ["issue-service-token", "bot", "--role", "owner"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    for role in ROLES:
        assert parser.parse_args(["set-role", "a@example.com", role]).role == role


def test_an_account_answers_with_a_declared_role() -> None:
    assert Account.model_json_schema()["$defs"]["Role"]["enum"] == list(ROLES)
