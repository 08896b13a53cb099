"""Typed application keys of the gateway app (no string keys on `app`)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.broker_link import BrokerLink
from gateway.event_feed import EventFeed
from gateway.live import LiveHub
from gateway.metrics import GatewayMetrics
from gateway.read_cache import ReadCache
from shared.settings import Settings
from shared.tokens import JwksKeySource, TokenVerifier

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", BrokerLink)
VERIFIER = web.AppKey("verifier", TokenVerifier)
JWKS = web.AppKey("jwks", JwksKeySource)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", GatewayMetrics)
FEED = web.AppKey("feed", EventFeed)
READ_CACHE = web.AppKey("read_cache", ReadCache)
LIVE = web.AppKey("live", LiveHub)
