"""`python -m bench.floor` measures what it says: its fullest variant really sends each message
through a durable quorum queue, runs its inserts in transactions that waiting messages share, and
publishes one persistent event that the echo server consumes; its plain variant does none of that."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import pytest

# bench/ runs from the checkout (`python -m bench`) and is not installed with the services.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.echo_consumer import EVENT_KEY
from bench.floor import start_echo
from bench.options import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL
from bench.processes import ProcessSet
from bench.stack import Backends as BenchBackends

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="the bench creates its vhost with rabbitmqctl")


def _queues(vhost: str) -> dict[str, dict[str, object]]:
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-p", vhost, "name", "type", "durable", "messages", "--formatter", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {row["name"]: row for row in json.loads(listed.stdout)}


async def test_the_fullest_variant_does_the_contracts_broker_and_database_work(tmp_path: Path) -> None:
    backends = BenchBackends(DEFAULT_DATABASE_URL, DEFAULT_AMQP_URL)
    await backends.create()
    processes = ProcessSet(tmp_path)
    try:
        full, full_queue = await start_echo(processes, "full", backends, transaction="grouped", quorum=True, event=True, statements=3)
        plain, plain_queue = await start_echo(processes, "plain", backends, transaction="none", quorum=False, event=False, statements=3)
        queues = _queues(backends.name)
        assert queues[full_queue]["type"] == "quorum" and queues[full_queue]["durable"] is True
        assert queues[plain_queue]["type"] == "classic" and queues[plain_queue]["durable"] is False
        # The echo server's own feed queue takes every event; a second one bound here sees them too.
        connection = await aio_pika.connect(backends.amqp_url)
        channel = await connection.channel()
        watch = await channel.declare_queue(exclusive=True)
        await watch.bind(f"{full_queue}.events", routing_key="#")
        database = await asyncpg.connect(backends.database_url)
        try:
            rows_before = await database.fetchval("SELECT count(*) FROM bench_floor")
            async with aiohttp.ClientSession() as session:
                for url, body in ((full, b'{"n": 1}'), (plain, b'{"n": 2}')):
                    async with session.post(url + "/", data=body) as response:
                        assert response.status == 200
                        assert await response.read() == body
            event = await watch.get(timeout=5, fail=False)
            for _ in range(50):
                if event is not None:
                    break
                await asyncio.sleep(0.1)
                event = await watch.get(timeout=5, fail=False)
            assert event is not None and event.body == b'{"n": 1}' and event.routing_key == EVENT_KEY
            assert event.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            await event.ack()
            # Three INSERTs for the full variant's message, none for the plain one's.
            assert await database.fetchval("SELECT count(*) FROM bench_floor") - rows_before == 3
            assert await database.fetchval("SELECT count(*) FROM bench_floor WHERE body = $1", '{"n": 2}') == 0
            # A burst shares transactions: fewer transaction ids (xmin) than messages, three rows each.
            async with aiohttp.ClientSession() as session:

                async def send(n: int) -> bytes:
                    async with session.post(full + "/", data=f'{{"burst": {n}}}'.encode()) as response:
                        return await response.read()

                assert await asyncio.gather(*(send(n) for n in range(24))) == [f'{{"burst": {n}}}'.encode() for n in range(24)]
            burst = await database.fetch("SELECT body, xmin::text AS tx FROM bench_floor WHERE body LIKE '{\"burst\"%'")
            assert len(burst) == 24 * 3
            assert len({row["tx"] for row in burst}) < 24, "the waiting messages shared transactions"
            # The server consumes the events from a queue of its own and acks them: nothing waits there.
            await asyncio.sleep(0.5)
            feeds = {name: row["messages"] for name, row in _queues(backends.name).items() if name.startswith("amq.gen-")}
            assert feeds.pop(watch.name) == 24, "ours holds the burst's events, unread"
            assert list(feeds.values()) == [0], feeds
        finally:
            await database.close()
            await connection.close()
    finally:
        processes.stop()
        await backends.drop()
