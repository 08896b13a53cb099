"""What every fault test checks besides its own figures: no 500, and no error nobody can explain.

A fault (a broker or database restart, a kill -9, an outage) may cost callers a 503 or a 504,
and may make a process log an ERROR line that says exactly what happened to it. It must not cost
anyone a 500, and it must not make any process log an ERROR line that is not a consequence of
that fault: such a line is a bug the fault uncovered (the 500 in one of ten RabbitMQ restarts
was one). So a fault test takes a `FaultWatch` (the `faults` fixture), which

- records every HTTP status the test's clients see (`saw`, or `trace_config` on a session), and
  every status the gateway logs for a failed request, and fails on any 5xx but 503 and 504;
- reads every process's log written during the test (each JSON line, from the offset each file
  had when the test began) and fails on any ERROR or CRITICAL line that is not `Expected`;

and the failure message shows the offending statuses and lines. Each test states what its fault
may explain (`faults.expect(...)`), from the named, narrow patterns below, each with its reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

#: What a fault may cost a caller: the broker or a service is away (503), or a reply did not come
#: in time (504). Anything else from 500 up is a bug.
EXPLAINED_STATUSES = frozenset({503, 504})
_REPORTED_LEVELS = frozenset({"error", "critical"})


@dataclass(frozen=True, slots=True)
class Expected:
    """An ERROR line a fault explains: from `logger`, its message matching `message` in full."""

    name: str
    logger: str
    message: str
    why: str

    def explains(self, line: dict[str, Any]) -> bool:
        return line.get("logger") == self.logger and re.fullmatch(self.message, str(line.get("message", "")), re.DOTALL) is not None


# -- what a fault explains ------------------------------------------------------------------------

#: RabbitMQ stopping closes every connection with 320 CONNECTION_FORCED, and aiormq logs that at
#: ERROR in every process connected to it. The robust connection reconnects; the tests check it did.
BROKER_FORCED_CLOSE = Expected(
    "the broker closed the connection for its shutdown",
    "aiormq.connection",
    r'Unexpected connection close from remote "[^"]*", Connection\.Close\(reply_code=320, reply_text="CONNECTION_FORCED - [^"]*"\)',
    "rabbitmqctl stop_app closes every client connection with CONNECTION_FORCED",
)

#: While the broker is down, each reconnect attempt of a robust connection (one a second) is
#: refused, and aiormq logs each at ERROR. A refused connection, nothing else: an authentication
#: or protocol failure reads differently and is not explained.
BROKER_REFUSED = Expected(
    "a reconnect attempt refused while the broker is down",
    "aiormq.connection",
    r"error when creating transport: <AMQPConnectionError: \(111, '(Connection refused|Connect call failed \('127\.0\.0\.1', \d+\))'\)>",
    "the broker's port is closed until it is back",
)

#: When its channel closes, aio-pika's RobustChannel tries at once to reopen it, before the
#: connection is back, and the close callback's failure is logged at ERROR by aio-pika's callback
#: collection. The robust connection reopens every channel once it reconnects (the tests check
#: the processes consume and answer again), so the line says nothing went wrong for good.
CHANNEL_EARLY_REOPEN = Expected(
    "a robust channel's reopen tried before its connection was back",
    "aio_pika.tools",
    r"Callback <OneShotCallback: cb=<bound method RobustChannel\._on_close of <aio_pika\.robust_channel\.RobustChannel object at 0x[0-9a-f]+>>>"
    r' error: (RuntimeError: <Connection: "[^"]*" at 0x[0-9a-f]+> closed|ChannelInvalidStateError: No active transport in channel)',
    "aio-pika reopens a closed robust channel at once, and again once the connection is restored",
)

#: Taken together: what a RabbitMQ stop and start explains.
BROKER_RESTART = (BROKER_FORCED_CLOSE, BROKER_REFUSED, CHANNEL_EARLY_REOPEN)
#: What cutting one process off the broker explains (tests/support/proxy.py drops its connections
#: and refuses new ones until restored).
BROKER_CUT = (BROKER_REFUSED, CHANNEL_EARLY_REOPEN)

#: When a cluster node goes, the commands its callers (the gateway, connected to it) left in the
#: queues are still run by the services, and a reply to such a caller's direct reply-to address
#: makes RabbitMQ 3.10 crash the publishing channel (rabbit_channel:deliver_reply, case_clause
#: error) and close that connection with 541 INTERNAL_ERROR, which aiormq logs at ERROR. Services
#: reply on a connection of their own (shared/runner.py, attach_reply_channel), which fails over
#: and comes back; the cluster test checks that nothing is lost and every process answers again.
REPLY_TO_LOST_NODE = Expected(
    "a reply to a caller on the lost node closed the replying connection",
    "aiormq.connection",
    r"Unexpected connection close from remote \"[^\"]*\", Connection\.Close\(reply_code=541, reply_text='INTERNAL_ERROR'\)",
    "RabbitMQ 3.10 cannot route a direct reply-to whose node has left the cluster, and crashes the channel",
)
#: What stopping one node of a cluster explains: what a restart does, and the replies to its callers.
CLUSTER_NODE_STOP = (*BROKER_RESTART, REPLY_TO_LOST_NODE)

#: What killing a consumer with SIGKILL explains in the processes that survive it: nothing.
KILLED_CONSUMER: tuple[Expected, ...] = ()

#: What cutting one process off PostgreSQL explains: nothing at ERROR (the runner holds commands
#: through it with warnings, shared/runner.py).
DATABASE_CUT: tuple[Expected, ...] = ()

#: What a PostgreSQL restart explains: nothing at ERROR (the runner holds commands through it
#: with warnings, shared/runner.py).
DATABASE_RESTART: tuple[Expected, ...] = ()

#: What losing the primary and promoting its standby explains: nothing at ERROR (the runner holds
#: commands through it with warnings; new connections find the promoted standby, shared/database.py).
DATABASE_FAILOVER: tuple[Expected, ...] = ()


# -- the watch ------------------------------------------------------------------------------------


@dataclass
class FaultWatch:
    """Statuses and log lines seen during one fault test; `check` fails on the unexplained ones."""

    log_dir: Path
    expected: list[Expected] = field(default_factory=list)
    statuses: list[tuple[int, str]] = field(default_factory=list)
    _offsets: dict[Path, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Only what is written from now on: earlier tests' lines are theirs.
        self._offsets = {path: path.stat().st_size for path in self.log_dir.glob("*.log")}

    def expect(self, *expected: Expected) -> None:
        """Add what this test's fault explains."""
        self.expected.extend(expected)

    def saw(self, status: int, what: str = "") -> None:
        """Record a status a client of the test was answered."""
        self.statuses.append((status, what))

    def trace_config(self) -> aiohttp.TraceConfig:
        """For `aiohttp.ClientSession(trace_configs=[...])`: records every answer the session gets."""

        async def on_request_end(_session: aiohttp.ClientSession, _context: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
            self.saw(params.response.status, f"{params.method} {params.url.path}")

        config = aiohttp.TraceConfig()
        config.on_request_end.append(on_request_end)
        return config

    def new_lines(self) -> list[tuple[str, str]]:
        """(file name, line) for every line the processes wrote since the watch began."""
        found: list[tuple[str, str]] = []
        for path in sorted(self.log_dir.glob("*.log")):
            with path.open("rb") as log:
                log.seek(self._offsets.get(path, 0))
                text = log.read().decode(errors="replace")
            found.extend((path.name, line) for line in text.splitlines() if line.strip())
        return found

    def problems(self) -> list[str]:
        """Every unexplained status and line, as the failure message shows them."""
        problems = [f"a client was answered {status} ({what})" for status, what in self.statuses if _unexplained(status)]
        for name, raw in self.new_lines():
            try:
                line = json.loads(raw)
            except ValueError:
                # Every line a service writes is JSON (shared/logs.py): anything else went around
                # the logging setup, an interpreter's dying traceback for one.
                problems.append(f"{name}: not a log line: {raw[:500]}")
                continue
            if not isinstance(line, dict):
                problems.append(f"{name}: not a log line: {raw[:500]}")
                continue
            status = line.get("status")
            if isinstance(status, int) and _unexplained(status):
                problems.append(f"{name}: answered {status}: {raw[:2000]}")
            elif str(line.get("level", "")).lower() in _REPORTED_LEVELS and not any(e.explains(line) for e in self.expected):
                problems.append(f"{name}: {raw[:2000]}")
        return problems

    def check(self) -> None:
        problems = self.problems()
        if problems:
            allowed = "; ".join(e.name for e in self.expected) or "nothing"
            shown = "\n".join(problems[:40])
            more = f"\n... and {len(problems) - 40} more" if len(problems) > 40 else ""
            raise AssertionError(
                f"the fault caused {len(problems)} unexplained 5xx answers or ERROR lines (it explains: {allowed}):\n{shown}{more}"
            )


def _unexplained(status: int) -> bool:
    return status >= 500 and status not in EXPLAINED_STATUSES
