"""What `DATABASE_URL` may say: one PostgreSQL server, or a primary and its standbys.

`postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write` names several hosts, the
way libpq and asyncpg read it: a new connection tries them in order and keeps the first that
matches `target_session_attrs`. That is how a service finds a promoted standby by itself after its
primary is lost: its pool's connections die with the old primary, and the new ones skip every
host that is down or still in recovery.

Several hosts need `target_session_attrs=read-write` (or `primary`): with asyncpg's default
(`any`) a connection would stay on whichever host answers first, a standby included, and every
write there fails with `read_only_sql_transaction`. Like libpq, asyncpg takes the attribute from
the environment (`PGTARGETSESSIONATTRS`) when the URL has none, so that is checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("postgresql", "postgres")
#: What asyncpg accepts for `target_session_attrs` (asyncpg.connect_utils.SessionAttribute).
SESSION_ATTRIBUTES = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
#: Where asyncpg (like libpq) looks when the URL names no `target_session_attrs`.
SESSION_ATTRIBUTES_VARIABLE = "PGTARGETSESSIONATTRS"
#: The ones that keep a writing connection off a standby.
WRITABLE_SESSION_ATTRIBUTES = ("read-write", "primary")


class DatabaseUrlError(ValueError):
    """`DATABASE_URL` names no usable server; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A checked `DATABASE_URL`: its hosts in the order they are tried, and what it asks of them."""

    url: str
    hosts: tuple[tuple[str, int | None], ...]
    target_session_attrs: str | None

    @property
    def where(self) -> str:
        """host:port of every server, without credentials, for messages to an operator."""
        return ",".join(f"{host}:{port}" if port else host for host, port in self.hosts)


def parse_database_url(url: str, env_attrs: str | None = None) -> DatabaseUrl:
    """Check `url` the way asyncpg will read it, refusing what asyncpg would only refuse later
    (or, for several hosts without `target_session_attrs=read-write`, never). `env_attrs` is
    `PGTARGETSESSIONATTRS`, which asyncpg uses when the URL has no `target_session_attrs`."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # urllib's own refusals: an unclosed IPv6 bracket
        raise DatabaseUrlError(f"is malformed ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise DatabaseUrlError(f"must be a {' or '.join(SCHEMES)} URL")
    hostlist = parts.netloc.rpartition("@")[2]
    hosts = tuple(_host(entry) for entry in hostlist.split(","))
    query = parse_qs(parts.query)
    attrs = query.get("target_session_attrs", [None])[-1]
    source = "target_session_attrs"
    if attrs is None and env_attrs:
        attrs, source = env_attrs, f"target_session_attrs (from {SESSION_ATTRIBUTES_VARIABLE})"
    if attrs is not None and attrs not in SESSION_ATTRIBUTES:
        raise DatabaseUrlError(f"{source} must be one of {', '.join(SESSION_ATTRIBUTES)}, got {attrs!r}")
    if len(hosts) > 1 and attrs not in WRITABLE_SESSION_ATTRIBUTES:
        raise DatabaseUrlError(
            "names several hosts, so it needs target_session_attrs=read-write (or primary): "
            "without it a service could connect to a standby and fail every write"
        )
    return DatabaseUrl(url, hosts, attrs)


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`, fit for an error message or a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url
    return parts._replace(netloc=f"{user}:***{at}{hostlist}").geturl()


def _host(entry: str) -> tuple[str, int | None]:
    """One `host[:port]` of the host list (IPv6 in brackets)."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise DatabaseUrlError(f"has a malformed IPv6 host {entry!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = entry.partition(":")
    if not host:
        raise DatabaseUrlError("names no host" if not entry else f"has a port with no host: {entry!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise DatabaseUrlError(f"has a bad port for {host}: {port_text!r}")
    return host, int(port_text)


def read_only_session_attrs(url: str, env_attrs: str | None = None) -> str | None:
    """The `target_session_attrs` a read-only pool on `url` must use, or None to keep the URL's.

    A read-only pool starts its sessions with `default_transaction_read_only=on`, which the server
    reports back; asyncpg's `read-write` check reads that report and would refuse every host, the
    primary included. `primary` asks the same question the right way (is the server in recovery?)
    and keeps reads on the primary, where a caller sees what it just wrote: `synchronous_commit=on`
    makes a standby store a commit before it is acknowledged, not show it.
    """
    attrs = parse_qs(urlsplit(url).query).get("target_session_attrs", [None])[-1] or env_attrs
    return "primary" if attrs == "read-write" else None
