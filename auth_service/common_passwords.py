"""The 10,000 most common passwords, which a new account may not use.

An attacker spraying passwords tries these first, so an account that has one falls to the first
few guesses whatever the login rate limit allows. The list is data shipped with the package
(auth_service/data/common-passwords.txt; its source and licence are in data/README.md), read once
on first use. It is checked before hashing: refusing costs a set lookup, not an Argon2 hash.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

#: How many passwords the list holds, as its detail says.
LIST_SIZE = 10_000
TOO_COMMON = (
    "This password is too common: it is on the list of the 10,000 most common passwords, which attackers try first. Choose another."
)


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("auth_service").joinpath("data/common-passwords.txt").read_text(encoding="utf-8")
    passwords = frozenset(line for line in text.split("\n") if line)
    if len(passwords) != LIST_SIZE:  # a truncated or doubled file would refuse the wrong passwords
        raise RuntimeError(f"auth_service/data/common-passwords.txt holds {len(passwords)} passwords, not {LIST_SIZE}")
    return passwords


def is_common(password: str) -> bool:
    """Whether `password` is on the list, whatever its case (the list is lowercase)."""
    return password.lower() in common_passwords()
