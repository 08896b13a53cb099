"""AMQP_URL naming several brokers: how it is read, in which order the brokers are tried, and a
robust connection that moves to another broker when its own is lost, with its queue and consumer.

The three-node cluster this is for is run by tests/test_broker_cluster.py; here a cuttable proxy in
front of the machine's broker stands in for the node that dies, and the broker itself for another.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from shared import broker_failover
from shared.broker import broker_urls, login_user
from shared.broker_failover import FailoverConnection, connect_first, connect_robust
from shared.settings import ConfigurationError, Settings
from tests.support.backends import Backends
from tests.support.proxy import CuttableProxy
from tests.support.stack import free_port

A, B, C = (f"amqp://zt:pw@10.0.0.{n}:5672/posts" for n in (1, 2, 3))


@pytest.mark.unit
def test_one_url_is_one_broker() -> None:
    assert broker_urls("amqp://guest:guest@127.0.0.1:5672/") == ["amqp://guest:guest@127.0.0.1:5672/"]


@pytest.mark.unit
def test_several_urls_in_their_order() -> None:
    assert broker_urls(f"{A}, {B},{C}") == [A, B, C]
    assert login_user(f"{A},{B}") == "zt"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"{A},amqp://zt:pw@10.0.0.2:5672/other", "same vhost"),
        (f"{A},amqp://someone:pw@10.0.0.2:5672/posts", "same user"),
        (f"{A},http://10.0.0.2/posts", "not an amqp"),
        (f"{A},,{B}", "empty"),
        (f"{A},amqp:///posts", "not an amqp"),
    ],
)
def test_brokers_that_are_not_one_cluster_are_refused(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        broker_urls(value)
    with pytest.raises(ConfigurationError, match="AMQP_URL"):
        Settings.from_env({"AMQP_URL": value})


@pytest.mark.unit
def test_a_refused_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        broker_urls("http://zt:secret@10.0.0.2/posts")
    assert "secret" not in str(refused.value)


@pytest.mark.unit
def test_settings_keep_every_broker() -> None:
    assert Settings.from_env({"AMQP_URL": f"{A},{B}"}).amqp_url == f"{A},{B}"


class Refusing:
    """Stands in for aio-pika's transport: records which broker each attempt went to, and when."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, float]] = []

    async def connect(self, url: URL, *args: Any, **kwargs: Any) -> None:
        self.attempts.append((url.host or "", time.monotonic()))
        raise ConnectionRefusedError(111, "Connection refused")


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Refusing:
    fake = Refusing()
    monkeypatch.setattr(aio_pika.connection.UnderlayConnection, "connect", fake.connect)
    return fake


@pytest.mark.unit
async def test_the_first_connection_tries_every_broker_in_order(refusing: Refusing) -> None:
    with pytest.raises(ConnectionRefusedError):
        await connect_robust(f"{A},{B},{C}")
    assert [host for host, _ in refusing.attempts] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


@pytest.mark.unit
async def test_reconnection_goes_round_robin_and_pauses_after_each_round(refusing: Refusing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_failover, "SWITCH_SECONDS", 0.05)
    # Not fail-fast: it keeps trying, as a connection that has been up does once it is lost.
    connection = FailoverConnection([A, B, C], start=1, reconnect_interval=1.0, fail_fast="0")
    trying = asyncio.create_task(connection.connect())
    try:
        deadline = time.monotonic() + 10
        while len(refusing.attempts) < 7 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        trying.cancel()
        await connection.close()
        await asyncio.gather(trying, return_exceptions=True)
    hosts = [host for host, _ in refusing.attempts[:7]]
    assert hosts == ["10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2"]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(refusing.attempts, refusing.attempts[1:7], strict=False)]
    # Within a round the next broker is tried at once; a round in which none answered waits the interval.
    assert [gap >= 0.9 for gap in gaps] == [False, False, True, False, False, True]


@pytest.mark.unit
async def test_one_broker_keeps_its_plain_reconnect_interval(refusing: Refusing) -> None:
    connection = FailoverConnection([A], reconnect_interval=0.4, fail_fast="0")
    trying = asyncio.create_task(connection.connect())
    try:
        deadline = time.monotonic() + 10
        while len(refusing.attempts) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        trying.cancel()
        await connection.close()
        await asyncio.gather(trying, return_exceptions=True)
    assert {host for host, _ in refusing.attempts} == {"10.0.0.1"}
    assert all(later - earlier >= 0.35 for (_, earlier), (_, later) in zip(refusing.attempts, refusing.attempts[1:3], strict=False))


def _via(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def test_a_plain_connection_reaches_the_first_broker_that_answers(backends: Backends) -> None:
    dead = _via(backends.amqp_url, free_port())
    connection, reached = await connect_first(f"{dead},{backends.amqp_url}", timeout=5)
    try:
        assert reached == 1
    finally:
        await connection.close()
    connection, reached = await connect_first(f"{backends.amqp_url},{dead}", start=1, timeout=5)
    try:
        assert reached == 0  # round robin: from the second, then back to the first
    finally:
        await connection.close()


async def test_a_lost_broker_is_replaced_by_the_next_with_queue_and_consumer(backends: Backends) -> None:
    upstream = urllib.parse.urlsplit(backends.amqp_url)
    proxy = CuttableProxy(upstream.hostname or "127.0.0.1", upstream.port or 5672)
    await proxy.start()
    dead = _via(backends.amqp_url, free_port())
    # The proxy is the node that dies; nothing listens on `dead`; the broker itself is the survivor.
    connection = await connect_robust(f"{_via(backends.amqp_url, proxy.port)},{dead},{backends.amqp_url}", reconnect_interval=0.5)
    try:
        assert isinstance(connection, FailoverConnection)
        assert connection.broker == f"127.0.0.1:{proxy.port}"
        channel = await connection.channel()
        queue = await channel.declare_queue(f"zt.failover.{uuid4().hex}", exclusive=True)
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await received.put(message.body)

        await queue.consume(on_message, no_ack=True)
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())

        cut_at = time.monotonic()
        await proxy.cut()
        await asyncio.wait_for(reconnected.wait(), 10)
        took = time.monotonic() - cut_at
        assert connection.broker == f"{upstream.hostname}:{upstream.port}"
        assert took < 3, f"the failover took {took:.1f} s"
        # Restored on the new broker: the queue (exclusive, so re-declared there) and its consumer.
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue.name)
        assert await asyncio.wait_for(received.get(), 5) == b"after"
    finally:
        await connection.close()
        await proxy.cut()


class Settling(Refusing):
    """Brokers that let the connection in but fail its restore, as a cluster still settling does."""

    async def connect(self, url: URL, *args: Any, **kwargs: Any) -> Any:
        self.attempts.append((url.host or "", time.monotonic()))

        async def close(*_: Any) -> None:
            return None

        return SimpleNamespace(connection=SimpleNamespace(is_closed=True, close=close), close=close)


@pytest.mark.unit
async def test_brokers_that_answer_but_fail_the_restore_are_retried_with_a_growing_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Settling()
    monkeypatch.setattr(aio_pika.connection.UnderlayConnection, "connect", fake.connect)

    async def fail_restore(self: Any) -> None:
        raise ConnectionError("INTERNAL_ERROR")

    monkeypatch.setattr(RobustConnection, "_on_connected", fail_restore)
    monkeypatch.setattr(broker_failover, "SWITCH_SECONDS", 0.01)
    connection = FailoverConnection([A, B], reconnect_interval=0.2, fail_fast="0")
    trying = asyncio.create_task(connection.connect())
    try:
        deadline = time.monotonic() + 10
        while len(fake.attempts) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        trying.cancel()
        await connection.close()
        await asyncio.gather(trying, return_exceptions=True)
    assert [host for host, _ in fake.attempts[:4]] == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(fake.attempts, fake.attempts[1:4], strict=False)]
    # Not the quick switch of an unreachable node: the pause doubles from the reconnect interval.
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38 and gaps[2] >= 0.78, gaps
