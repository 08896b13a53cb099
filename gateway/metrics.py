"""The gateway's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shared.events import public_events

#: The label values of the `/live` metrics (gateway/live.py), declared so none comes from outside.
LIVE_MESSAGE_KINDS = ("event", "replay", "reload", "heartbeat")
LIVE_DROP_REASONS = ("slow_reader", "shutdown")


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.commands = Counter(
            "gateway_commands_total", "Commands sent, by name and outcome", ["command", "outcome"], registry=self.registry
        )

        self.events = Counter(
            "gateway_events_total",
            "Public events the read side received, by routing key (`unknown` if not public) and outcome",
            ["event", "outcome"],
            registry=self.registry,
        )

        # The read cache (gateway/read_cache.py). Each label takes only the values declared there.
        self.read_cache_lookups = Counter(
            "gateway_read_cache_lookups_total",
            "Public reads the cache was asked for, by command and outcome (hit, miss, bypass: the feed is down)",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.read_cache_invalidations = Counter(
            "gateway_read_cache_invalidations_total",
            "Times the read cache dropped what a change made stale, by reason (event, own_write, feed_down, gap)",
            ["reason"],
            registry=self.registry,
        )
        self.read_cache_evictions = Counter(
            "gateway_read_cache_evictions_total", "Entries the read cache let go to stay within its bounds", registry=self.registry
        )
        self.read_cache_stale_fills = Counter(
            "gateway_read_cache_stale_fills_total",
            "Answers of misses not kept because a change made them stale while they were read",
            registry=self.registry,
        )
        self.read_cache_live = Gauge(
            "gateway_read_cache_live", "1 while the event feed is up and the read cache serves and keeps answers", registry=self.registry
        )
        self.read_cache_entries = Gauge("gateway_read_cache_entries", "Answers the read cache holds", registry=self.registry)
        self.read_cache_bytes = Gauge("gateway_read_cache_bytes", "Bytes of body the read cache holds", registry=self.registry)
        self.live_streams = Gauge("gateway_live_streams", "Open GET /live streams", registry=self.registry)
        self.live_refused = Counter(
            "gateway_live_refused_total", "GET /live streams refused with 503: the limit was reached", registry=self.registry
        )
        self.live_dropped = Counter(
            "gateway_live_dropped_total",
            "GET /live streams the gateway closed: a reader whose queue was full, or still open at shutdown",
            ["reason"],
            registry=self.registry,
        )
        self.live_messages = Counter(
            "gateway_live_messages_total",
            "SSE messages queued on GET /live streams, by kind (event, replay, reload; heartbeats as sent)",
            ["kind"],
            registry=self.registry,
        )
        for kind in LIVE_MESSAGE_KINDS:
            self.live_messages.labels(kind)
        for reason in LIVE_DROP_REASONS:
            self.live_dropped.labels(reason)

    def count_event(self, key: str, outcome: str) -> None:
        self.events.labels(key if key in public_events() else "unknown", outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
