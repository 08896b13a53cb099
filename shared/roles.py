"""The roles an account can hold, defined once.

A role is a claim in a signed access token (`role`), a column in auth_service's accounts, a
choice of the `set-role` and `issue-service-token` operator commands and a field of the account
that `get-me` returns; all of them read this enum. Adding a role is one line here (and a
migration for the accounts table's CHECK, which tests/test_roles.py holds to this list).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


#: Every role's name, in declaration order.
ROLES: tuple[str, ...] = tuple(role.value for role in Role)
