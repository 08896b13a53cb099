"""The small HTTP face every service has: /healthz, /readyz and /metrics.

`/healthz` says the process is up. `/readyz` says it can do its job right now: the database
answers, the broker connection is open and its consumers are running; otherwise 503 with a
problem+json naming what is down. Services may add routes (auth_service adds the JWKS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from shared.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from shared.problems import problem

#: A readiness check: returns None when fine, or a short sentence saying what is wrong.
Check = Callable[[], Awaitable[str | None]]


async def run_checks(checks: dict[str, Check], timeout: float = 2.0) -> dict[str, str]:
    """Run every check; a map of the failing ones to their reason."""

    async def one(check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return "timed out"
        except Exception as exc:  # a probe must answer, whatever the dependency does
            return str(exc) or type(exc).__name__

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return {name: reason for name, reason in zip(checks, results, strict=True) if reason}


def build_probe_app(checks: dict[str, Check], metrics: ServiceMetrics, extra_routes: Iterable[web.RouteDef] = ()) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        failing = await run_checks(checks)
        if failing:
            detail = "; ".join(f"{name}: {reason}" for name, reason in failing.items())
            return problem(503, "Service Unavailable", f"Not ready: {detail}", checks=failing)
        return web.json_response({"status": "ready"})

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view), *extra_routes])
    return app
