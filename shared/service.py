"""Start-up and shutdown of a service process, the same for every service.

A service's `__main__` is one call: `run_service(NAME, MIGRATIONS, wire)`, where `wire` builds its
routes from settings and a pool. This module migrates the schema, opens the pool and the broker
connection, declares the topology or, with `BROKER_TOPOLOGY=verify`, checks that it exists (a
missing piece stops the process), runs the outbox relay and the probe server, consumes, and on
SIGTERM stops consuming, lets in-flight messages finish, flushes the outbox and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import asyncpg
import uvloop
from aiohttp import web

from shared import retention
from shared.audit import audit_route
from shared.broker import dead_letter_queue_name
from shared.broker_failover import connect_robust
from shared.commands import audit_command_name
from shared.database import TRANSIENT_DATABASE_ERRORS, create_pool
from shared.logs import configure_logging
from shared.metrics import ServiceMetrics
from shared.migrations import PLATFORM_MIGRATIONS, MigrationSource, migrate
from shared.outbox import OutboxRelay
from shared.pacing import Backoff, every
from shared.probes import build_probe_app
from shared.routes import CommandRoute, EventRoute, check_routes
from shared.runner import MessageProcessor
from shared.settings import ConfigurationError, Settings
from shared.tokens import JwksKeySource, KeySource, TokenVerifier
from shared.topology import TopologyError, check_wiring, open_service_queues
from shared.tracing import configure_tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

SHUTDOWN_DEADLINE_SECONDS = 10.0
#: How often the gauges that need a query (outbox backlog, dead-letter depth) are refreshed.
GAUGE_SECONDS = 5.0
#: How often expired idempotency records are purged.
PURGE_SECONDS = 60.0
#: How long registering the consumers may take at start-up. A broker lost at that moment can leave
#: aio-pika waiting for a channel that is never restored; failing start-up lets a supervisor retry.
CONSUME_START_SECONDS = 30.0


@dataclass
class Wiring:
    """What a service contributes: its routes, and optionally its own keys, HTTP routes, loops
    that run for the life of the process (each is given the stop event) and whatever it opened
    that must be closed when the service stops (`closers`)."""

    commands: list[CommandRoute]
    events: list[EventRoute]
    http_port: int
    key_source: KeySource | None = None
    http_routes: list[web.RouteDef] = field(default_factory=list)
    background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


WireFn = Callable[[Settings, asyncpg.Pool], Awaitable[Wiring]]


def run_service(name: str, migrations: Path, wire: WireFn) -> None:
    settings = Settings.from_env()
    tracing = configure_tracing(f"{name}_service")  # before any aiohttp app or aio-pika queue exists
    configure_logging(f"{name}_service", settings.log_level, trace_ids=tracing)
    try:
        # Before anything is consumed: its events would be parked everywhere as not its owner's.
        settings.check_broker_user(name)
    except ConfigurationError as exc:
        log.error(f"cannot start: {exc}")
        sys.exit(1)
    try:
        # uvloop: the same asyncio, less CPU per message (bench/RESULTS.md).
        uvloop.run(serve(name, migrations, wire, settings))
    except KeyboardInterrupt:
        pass
    except TopologyError as exc:
        log.error(f"cannot start: {exc}")
        sys.exit(1)


async def serve(name: str, migrations: Path, wire: WireFn, settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the service until `stop` is set (or SIGTERM). Whatever start-up opened is closed on the
    way out, in reverse order, whether the service stopped or start-up failed part-way."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass

    await _retry_until_up(
        "database",
        lambda: migrate(settings.database_url, name, [MigrationSource("platform", PLATFORM_MIGRATIONS), MigrationSource(name, migrations)]),
        stop,
    )
    async with contextlib.AsyncExitStack() as opened:
        pool = await create_pool(settings.database_url, name, max_size=settings.database_pool_size)
        opened.push_async_callback(pool.close)
        read_pool = await create_pool(settings.database_url, name, max_size=4, read_only=True)
        opened.push_async_callback(read_pool.close)
        http = await opened.enter_async_context(aiohttp.ClientSession())
        metrics = ServiceMetrics()

        wiring = await wire(settings, pool)
        for close in wiring.closers:
            opened.push_async_callback(close)
        check_routes(wiring.commands)  # refuse to start with an undeclared policy
        check_wiring(name, [r.name for r in wiring.commands] + [audit_command_name(name)], [r.routing_key for r in wiring.events])
        keys = wiring.key_source
        if keys is None:
            jwks = JwksKeySource(settings.auth_jwks_url, http)
            jwks.start()  # refreshes the key set as its max-age runs out, so a withdrawn key stops verifying
            opened.push_async_callback(jwks.close)
            keys = jwks
        verifier = TokenVerifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)

        connection = await _retry_until_up("broker", lambda: connect_robust(settings.amqp_url), stop)
        opened.push_async_callback(connection.close)
        # References to channels and queues are kept for the life of the process: connect_robust
        # restores only what is still referenced after a broker restart.
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=settings.prefetch_count)
        confirm_channel = await connection.channel(publisher_confirms=True)
        command_queue, event_queue = await open_service_queues(consume_channel, name, settings.broker_topology)

        relay = OutboxRelay(pool, settings.database_url, name, connection, user_id=settings.amqp_user)
        processor = MessageProcessor(
            service=name,
            commands=[*wiring.commands, audit_route(name)],
            events=wiring.events,
            pool=pool,
            read_pool=read_pool,
            verifier=verifier,
            metrics=metrics,
            relay=relay,
            max_message_bytes=settings.max_message_bytes,
            group_commit_max_batch=settings.group_commit_max_batch,
            group_commit_writers=settings.group_commit_writers,
            token_ttl_seconds=settings.access_token_ttl_seconds,
            user_id=settings.amqp_user,
            broker_users=settings.broker_users,
        )
        processor.attach_dead_letter_channel(confirm_channel, renew=lambda: connection.channel(publisher_confirms=True))
        # Replies on a connection of their own (MessageProcessor.attach_reply_channel says why).
        reply_connection = await _retry_until_up("broker", lambda: connect_robust(settings.amqp_url), stop)
        opened.push_async_callback(reply_connection.close)
        processor.attach_reply_channel(await reply_connection.channel(publisher_confirms=False))

        async def database_ready() -> str | None:
            # A server that answers but takes no writes (a standby not yet promoted, reached
            # through an endpoint that moved early) cannot run a command either.
            async with pool.acquire() as conn:
                read_only = await conn.fetchval("SELECT current_setting('transaction_read_only') = 'on'")
            return "the database takes no writes (a standby, or read-only)" if read_only else None

        consuming = asyncio.Event()

        async def broker_ready() -> str | None:
            # Not ready until the consumers are registered: a service that answers /readyz but
            # takes no messages would pass a rollout it should hold up.
            if not consuming.is_set():
                return "not consuming yet"
            if connection.is_closed or consume_channel.is_closed:
                return "the broker connection is down"
            return None

        async def outbox_gauge() -> str | None:
            await _observe_outbox(relay, metrics)
            return None

        probe_app = build_probe_app(
            {"database": database_ready, "broker": broker_ready, "outbox": outbox_gauge}, metrics, wiring.http_routes
        )
        runner = web.AppRunner(probe_app, access_log=None)
        await runner.setup()
        opened.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, settings.http_host, wiring.http_port).start()

        background = [
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(
                retention.purge_every(PURGE_SECONDS, pool, partial(retention.purge_platform_tables, settings=settings), stop),
                name="retention-purge",
            ),
            asyncio.create_task(
                _watch_dead_letters(connection, [command_queue.name, event_queue.name], metrics, stop),
                name="dead-letter-gauge",
            ),
            asyncio.create_task(_watch_outbox(relay, metrics, stop), name="outbox-gauges"),
            *(asyncio.create_task(loop(stop), name=getattr(loop, "__qualname__", "wiring")) for loop in wiring.background),
        ]
        opened.push_async_callback(_cancel, background)
        # Flushed before the tasks are cancelled and the broker connection closes.
        opened.push_async_callback(relay.stop)

        consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        # Registered before the consumers, so it runs once they are cancelled, whatever happens.
        opened.push_async_callback(_finish_in_flight, processor)
        opened.push_async_callback(_stop_consuming, processor, consumers)
        async with asyncio.timeout(CONSUME_START_SECONDS):
            consumers.append((command_queue, await command_queue.consume(processor.on_command)))
            consumers.append((event_queue, await event_queue.consume(processor.on_event)))
        consuming.set()
        log.info("service started", extra={"commands": sorted(processor.commands), "http_port": wiring.http_port})

        await stop.wait()
        log.info("stopping: no new messages, finishing in-flight ones")
    log.info("service stopped")


async def _stop_consuming(processor: MessageProcessor, consumers: list[tuple[aio_pika.abc.AbstractQueue, str]]) -> None:
    """Take no new messages; those already delivered are held or finished (`_finish_in_flight`)."""
    processor.stopping = True
    for queue, tag in consumers:
        try:
            await queue.cancel(tag)
        except aio_pika.exceptions.AMQPError:
            pass


async def _finish_in_flight(processor: MessageProcessor) -> None:
    if not await processor.wait_idle(SHUTDOWN_DEADLINE_SECONDS):
        log.warning("shutdown deadline passed with messages in flight; they will be redelivered")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


#: What start-up waits out: a dependency that is not up yet.
_STARTUP_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_DATABASE_ERRORS, aio_pika.exceptions.AMQPError, ConnectionError)


async def _retry_until_up(what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
    """Keep trying to reach a dependency at start-up, so the stack can start in any order."""
    delays = Backoff(0.5)
    while True:
        try:
            return await attempt()
        except _STARTUP_ERRORS as exc:
            if stop.is_set():
                raise
            delay = next(delays)
            log.warning(f"waiting for the {what}", extra={"error": str(exc) or type(exc).__name__, "retry_in": delay})
            await asyncio.sleep(delay)


async def _watch_dead_letters(
    connection: aio_pika.abc.AbstractRobustConnection, queues: list[str], metrics: ServiceMetrics, stop: asyncio.Event
) -> None:
    """Keep the dead_letter_queue_depth gauge current, so parked messages show on a dashboard."""
    # A channel of its own: a failed passive declare closes the channel it ran on.
    channel: aio_pika.abc.AbstractRobustChannel | None = None
    async for _ in every(GAUGE_SECONDS, stop):
        if channel is None:
            try:
                channel = await connection.channel()
            except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                continue  # the broker is away (robust channels come back by themselves once open)
        for queue in queues:
            try:
                # robust=False: a robust channel answers a repeated passive declare from its cache,
                # with the message count of the first one.
                declared = await channel.declare_queue(dead_letter_queue_name(queue), passive=True, robust=False)
                metrics.dead_letter_depth.labels(dead_letter_queue_name(queue)).set(declared.declaration_result.message_count or 0)
            except aio_pika.exceptions.AMQPError:
                pass  # the broker is away; the gauge keeps its last value


async def _observe_outbox(relay: OutboxRelay, metrics: ServiceMetrics) -> None:
    pending, oldest_age = await relay.backlog()
    metrics.outbox_pending.set(pending)
    metrics.outbox_lag.set(oldest_age)


async def _watch_outbox(relay: OutboxRelay, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    """Keep outbox_pending_events and outbox_oldest_event_age_seconds current: a backlog that
    grows or ages means the relay cannot reach the broker."""
    async for _ in every(GAUGE_SECONDS, stop):
        try:
            await _observe_outbox(relay, metrics)
        except TRANSIENT_DATABASE_ERRORS:
            pass  # the database is away; the gauges keep their last value
