"""Connecting to one of several brokers (the nodes of a RabbitMQ cluster), and failing over.

AMQP_URL may name several brokers, comma-separated (`shared.broker.broker_urls`). Every connection
a process makes goes through here:

- `connect_robust` is aio-pika's robust connection (it restores channels, declared queues and
  exchanges, and consumers after a loss) with one change: each reconnection attempt goes to the
  next URL, round robin. aio-pika reconnects to `connection.url`, read afresh by every attempt, so
  `FailoverConnection` points that at the next broker before each attempt. Within a round the
  next node is tried after `SWITCH_SECONDS`; after a round in which none answered, after the
  connection's `reconnect_interval` (RECONNECT_SECONDS), the pause one broker has always had.
  The first attempt after a loss is immediate and goes to another node, so a lost node costs
  one failed TCP connect at most, not a reconnect interval. A node that answers but fails the
  restore (a cluster still settling) is retried with a growing pause.
- `connect_first` is a plain connection to the first broker that answers, starting where the
  caller says: for connections that handle their loss themselves (the gateway's event feed,
  whose exclusive queue goes with its connection) and for one-shot tools.

With one URL both behave exactly as aio-pika's `connect_robust` and `connect` did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from shared.broker import RECONNECT_SECONDS, broker_address, broker_urls
from shared.pacing import Backoff

log = logging.getLogger(__name__)

#: The pause before trying the next broker of a round: long enough not to spin when every node
#: refuses at once, short enough that a dead node barely delays the failover.
SWITCH_SECONDS = 0.1
#: The longest pause between attempts on brokers that answer but cannot restore the connection yet.
SETTLING_CAP_SECONDS = 5.0
#: What a connection attempt raises when the broker it tried is away or refuses.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (aio_pika.exceptions.AMQPError, OSError, TimeoutError)

# aio-pika runs every (re)connection attempt through this private method, which connects to
# `self.url`; FailoverConnection wraps it. Checked at import, so an aio-pika that renamed it fails
# loudly here rather than silently never failing over (tests/test_broker_failover.py shows it).
_ATTEMPT = "_RobustConnection__connect_transport"
if not hasattr(RobustConnection, _ATTEMPT):  # pragma: no cover - only on an incompatible aio-pika
    raise ImportError(f"aio-pika's RobustConnection has no {_ATTEMPT}: shared/broker_failover.py needs updating")


class FailoverConnection(RobustConnection):
    """A robust connection that reconnects to the next of `urls` each time, round robin."""

    def __init__(self, urls: Sequence[str], *, start: int = 0, **kwargs: Any) -> None:
        self.broker_urls = [URL(url) for url in urls]
        self._index = start % len(self.broker_urls)
        self._attempted = False
        #: Failed attempts since the last success: a multiple of len(urls) ends a round.
        self._failures = 0
        super().__init__(self.broker_urls[self._index], **kwargs)
        self._round_interval: float = self.reconnect_interval
        self._settling = Backoff(self._round_interval, cap=SETTLING_CAP_SECONDS)

    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802 - aio-pika's name
        if self._attempted:
            self._index = (self._index + 1) % len(self.broker_urls)
            self.url = self.broker_urls[self._index]
            if len(self.broker_urls) > 1:
                log.info("connecting to the next broker", extra={"broker": broker_address(str(self.url))})
        self._attempted = True
        try:
            await getattr(super(), _ATTEMPT)()
        except BaseException:
            self._failures += 1
            # aio-pika sleeps `reconnect_interval` after a failed attempt: short within a round.
            self.reconnect_interval = self._round_interval if self._failures % len(self.broker_urls) == 0 else SWITCH_SECONDS
            if self.transport is not None and len(self.broker_urls) > 1:
                # The broker let us in but restoring the channels failed (a cluster still settling
                # after losing a node, say). Each such attempt re-registers the consumers, is
                # delivered messages and hands them back, which counts against their delivery
                # limit (shared/broker.py): back off rather than go round at once.
                self.reconnect_interval = next(self._settling)
            raise
        self._failures = 0
        self._settling = Backoff(self._round_interval, cap=SETTLING_CAP_SECONDS)
        self.reconnect_interval = self._round_interval

    @property
    def broker(self) -> str:
        """host:port of the broker connected to (or being tried)."""
        return broker_address(str(self.url))


async def connect_robust(
    amqp_url: str, *, timeout: float | None = None, reconnect_interval: float = RECONNECT_SECONDS
) -> AbstractRobustConnection:
    """A robust connection to the first of AMQP_URL's brokers that answers, which fails over to the
    others when lost. Raises what the last broker raised when none answers."""
    urls = broker_urls(amqp_url)
    error: BaseException | None = None
    for start in range(len(urls)):
        connection = FailoverConnection(urls, start=start, reconnect_interval=reconnect_interval)
        try:
            await connection.connect(timeout=timeout)
        except CONNECT_ERRORS as exc:
            error = exc
            with contextlib.suppress(Exception):
                await connection.close()
            continue
        return connection
    assert error is not None
    raise error


async def connect_first(amqp_url: str, *, start: int = 0, timeout: float | None = None) -> tuple[AbstractConnection, int]:
    """A plain connection to the first of AMQP_URL's brokers that answers, trying them in order from
    the `start`-th (round robin), and the index of the one it reached. Raises what the last one
    raised when none answers."""
    urls = broker_urls(amqp_url)
    error: BaseException | None = None
    for step in range(len(urls)):
        index = (start + step) % len(urls)
        try:
            return await aio_pika.connect(urls[index], timeout=timeout), index
        except CONNECT_ERRORS as exc:
            error = exc
            if step + 1 < len(urls):
                log.info(
                    "broker unreachable; trying the next",
                    extra={"broker": broker_address(urls[index]), "error": str(exc) or type(exc).__name__},
                )
    assert error is not None
    raise error
