"""The gateway's link to RabbitMQ: connects in the background and keeps trying.

The gateway starts and answers even when the broker is down: requests that need it get 503 with
`Retry-After` straight away instead of hanging, and the link comes up by itself when the broker
returns (aio-pika's robust connection then restores the reply consumer). With
`BROKER_TOPOLOGY=verify` it only checks that the `commands` exchange exists, and keeps trying
until an admin has created it.
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.broker_failover import connect_robust
from shared.client import CommandClient
from shared.errors import ServiceUnavailable
from shared.pacing import Backoff
from shared.settings import BrokerTopology
from shared.topology import TopologyError

log = logging.getLogger(__name__)


class BrokerLink:
    def __init__(self, url: str, *, rpc_timeout: float, topology: BrokerTopology = "declare") -> None:
        self._url = url
        self._rpc_timeout = rpc_timeout
        self._topology: BrokerTopology = topology
        self.connection: AbstractRobustConnection | None = None
        self._client: CommandClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="broker-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self.connection is not None:
            await self.connection.close()

    @property
    def client(self) -> CommandClient:
        if self._client is None or not self._client.ready:
            raise ServiceUnavailable("The message broker is unavailable", retry_after=5)
        return self._client

    @property
    def up(self) -> bool:
        return self._client is not None and self._client.ready

    async def _connect_forever(self) -> None:
        delays = Backoff(0.5)
        while True:
            connection = None
            try:
                connection = await connect_robust(self._url, timeout=5)
                client = CommandClient(connection, timeout=self._rpc_timeout, topology=self._topology)
                await client.start()
                self.connection, self._client = connection, client
                log.info("connected to the broker")
                return
            except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, TimeoutError, TopologyError) as exc:
                if connection is not None:  # connected, but the client could not start: do not leak it
                    await connection.close()
                what = "broker topology incomplete" if isinstance(exc, TopologyError) else "broker unreachable"
                delay = next(delays)
                log.warning(f"{what}; retrying", extra={"error": str(exc) or type(exc).__name__, "retry_in": delay})
                await asyncio.sleep(delay)
