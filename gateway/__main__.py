"""`python -m gateway` runs the HTTP gateway."""

from aiohttp import web

from gateway.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings

settings = Settings.from_env()
configure_logging("gateway", settings.log_level)
web.run_app(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, access_log=None, print=None)
