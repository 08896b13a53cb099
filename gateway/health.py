"""The gateway's /healthz, /readyz and /metrics.

Ready means: the broker link is up and every service's command queue has at least one consumer
(checked with a passive declare, which reports the consumer count without creating anything).
"""

from __future__ import annotations

import aio_pika
from aiohttp import web

from gateway.keys import BROKER, METRICS
from shared.broker import command_queue_name
from shared.declarations import SERVICE_NAMES
from shared.metrics import CONTENT_TYPE_LATEST
from shared.probes import run_checks
from shared.problems import problem


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    link = request.app[BROKER]

    async def broker() -> str | None:
        return None if link.up else "the broker is unreachable"

    def consumers(service: str):  # noqa: ANN202 - a small closure factory
        async def check() -> str | None:
            if not link.up or link.connection is None:
                return "the broker is unreachable"
            channel = await link.connection.channel()
            try:
                queue = await channel.declare_queue(command_queue_name(service), passive=True)
                count = queue.declaration_result.consumer_count
            except aio_pika.exceptions.ChannelClosed:
                return f"{service}_service has never started (no command queue)"
            finally:
                if not channel.is_closed:
                    await channel.close()
            return None if count else f"{service}_service is not consuming"

        return check

    failing = await run_checks({"broker": broker, **{f"{s}_service": consumers(s) for s in SERVICE_NAMES}})
    if failing:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failing.items())
        return problem(503, "Service Unavailable", f"Not ready: {detail}", checks=failing)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
