"""`python -m gateway` runs the HTTP gateway."""

import sys

import uvloop
from aiohttp import web

from gateway.app import create_app
from shared.declarations import GATEWAY
from shared.logs import configure_logging
from shared.settings import ConfigurationError, Settings
from shared.tracing import configure_tracing

settings = Settings.from_env()
try:
    # Before anything listens: commands sent as another process's user would be refused by
    # RabbitMQ, or have their client address ignored by auth_service.
    settings.check_broker_user(GATEWAY.name)
except ConfigurationError as exc:
    sys.exit(f"cannot start: {exc}")
tracing = configure_tracing("gateway")  # before create_app: the instrumentation wraps web.Application
configure_logging("gateway", settings.log_level, trace_ids=tracing)
web.run_app(
    create_app(settings),
    loop=uvloop.new_event_loop(),  # less CPU per request than the default loop (bench/RESULTS.md)
    host=settings.gateway_host,
    port=settings.gateway_port,
    access_log=None,
    print=None,
)
