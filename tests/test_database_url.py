"""DATABASE_URL with one host or several: what settings accept, what they refuse and why, and the
session attributes each pool connects with."""

from __future__ import annotations

import pytest

from shared.database_url import DatabaseUrlError, parse_database_url, read_only_session_attrs, redacted
from shared.settings import ConfigurationError, Settings

pytestmark = pytest.mark.unit

FAILOVER_URL = "postgresql://app:secret@db-a:5432,db-b:5433,[::1]:5434/posts?target_session_attrs=read-write"


def test_a_primary_and_its_standbys_are_tried_in_order() -> None:
    url = parse_database_url(FAILOVER_URL)
    assert url.hosts == (("db-a", 5432), ("db-b", 5433), ("::1", 5434))
    assert url.target_session_attrs == "read-write"
    assert url.where == "db-a:5432,db-b:5433,::1:5434"
    assert Settings.from_env({"DATABASE_URL": FAILOVER_URL}).database_url == FAILOVER_URL


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgres://db/x",
        "postgresql://db-a,db-b/x?target_session_attrs=primary",
        "postgresql://u@db-a:5432,db-b/x?sslmode=require&target_session_attrs=read-write",
    ],
)
def test_what_settings_accept(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://db/x", "must be a postgresql"),
        ("postgresql:///x", "names no host"),
        ("postgresql://db-a,,db-b/x?target_session_attrs=read-write", "names no host"),
        ("postgresql://:5432/x", "port with no host"),
        ("postgresql://db-a:54x2/x", "bad port"),
        ("postgresql://db-a:70000/x", "bad port"),
        ("postgresql://[::1/x", "malformed"),
        ("postgresql://[::1]x/x", "malformed IPv6"),
        ("postgresql://db/x?target_session_attrs=writable", "target_session_attrs must be one of"),
        # Without read-write a connection may settle on a standby and fail every write.
        ("postgresql://db-a,db-b/x", "needs target_session_attrs=read-write"),
        ("postgresql://db-a,db-b/x?target_session_attrs=any", "needs target_session_attrs=read-write"),
        ("postgresql://db-a,db-b/x?target_session_attrs=prefer-standby", "needs target_session_attrs=read-write"),
    ],
)
def test_what_settings_refuse(url: str, why: str) -> None:
    with pytest.raises(DatabaseUrlError, match=why):
        parse_database_url(url)
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": url})


def test_a_refusal_does_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"DATABASE_URL": "postgresql://app:hunter2@db-a,db-b/x"})
    assert "hunter2" not in str(refused.value)
    assert "app:***@db-a,db-b" in str(refused.value)
    assert redacted("postgresql://app@db/x") == "postgresql://app@db/x"


def test_the_read_only_pool_asks_for_the_primary_instead_of_read_write() -> None:
    # Its sessions report default_transaction_read_only=on, which asyncpg's read-write check
    # would hold against every host; `primary` asks whether the server is in recovery.
    assert read_only_session_attrs(FAILOVER_URL) == "primary"
    assert read_only_session_attrs("postgresql://db-a,db-b/x?target_session_attrs=primary") is None
    assert read_only_session_attrs("postgresql://db/x") is None


def test_the_environments_session_attributes_are_checked_like_the_urls() -> None:
    # asyncpg falls back on PGTARGETSESSIONATTRS when the URL names none.
    several = "postgresql://app@db-a,db-b/x"
    settings = Settings.from_env({"DATABASE_URL": several, "PGTARGETSESSIONATTRS": "read-write"})
    assert settings.database_url == several
    assert parse_database_url(several, "primary").target_session_attrs == "primary"
    with pytest.raises(ConfigurationError, match="PGTARGETSESSIONATTRS"):
        Settings.from_env({"DATABASE_URL": "postgresql://db/x", "PGTARGETSESSIONATTRS": "writable"})
    with pytest.raises(ConfigurationError, match="needs target_session_attrs=read-write"):
        Settings.from_env({"DATABASE_URL": several, "PGTARGETSESSIONATTRS": "any"})
    # The URL's own attribute wins, as in asyncpg.
    assert parse_database_url(FAILOVER_URL, "any").target_session_attrs == "read-write"
    # The read-only pool must not inherit read-write from the environment either.
    assert read_only_session_attrs(several, "read-write") == "primary"
    assert read_only_session_attrs(FAILOVER_URL, "any") == "primary"
