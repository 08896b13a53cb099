"""Prometheus metrics of a service process, in a registry of its own (no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServiceMetrics", "CONTENT_TYPE_LATEST"]


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.commands = Counter("commands_total", "Commands handled, by name and outcome", ["command", "outcome"], registry=r)
        self.command_seconds = Histogram(
            "command_duration_seconds",
            "Time from delivery to reply",
            ["command"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.command_batch_size = Histogram(
            "command_batch_size",
            "Commands that shared one transaction (group commit); a command that ran alone is not counted",
            registry=r,
            buckets=(2, 4, 8, 16, 32, 64),
        )
        self.decisions = Counter(
            "authorization_decisions_total", "Authorization decisions, by command and result", ["command", "decision"], registry=r
        )
        self.events = Counter(
            "events_consumed_total", "Events consumed, by routing key and outcome", ["routing_key", "outcome"], registry=r
        )
        self.dead_lettered = Counter("dead_lettered_total", "Messages this process dead-lettered", ["queue"], registry=r)
        self.wrong_publisher = Counter(
            "wrong_publisher_total",
            "Messages parked because their publisher (AMQP user_id) may not send them: "
            "an event not from its owner, an x-client-address not from the gateway",
            ["queue"],
            registry=r,
        )
        self.dead_letters_dropped = Counter(
            "dead_letters_dropped_total",
            "Messages this process meant to park but dropped, because their dead-letter queue was full",
            ["queue"],
            registry=r,
        )
        self.outbox_pending = Gauge("outbox_pending_events", "Events committed but not yet relayed", registry=r)
        self.outbox_lag = Gauge(
            "outbox_oldest_event_age_seconds", "Age of the oldest event not yet relayed; 0 when the outbox is empty", registry=r
        )
        self.dead_letter_depth = Gauge("dead_letter_queue_depth", "Messages waiting in a dead-letter queue", ["queue"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
