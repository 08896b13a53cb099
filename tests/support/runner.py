"""A `MessageProcessor` with no broker, routes or verifier, for the unit tests that drive one of
its methods directly (its outage handling, the order it parks, replies and settles in)."""

from __future__ import annotations

from typing import Any

from shared.metrics import ServiceMetrics
from shared.runner import MessageProcessor
from shared.settings import Settings


def bare_processor(pool: Any = None, read_pool: Any = None) -> MessageProcessor:
    """posts_service's runner with no commands or events; `pool` and `read_pool` are stand-ins."""
    return MessageProcessor(
        service="posts",
        commands=[],
        events=[],
        pool=pool,
        read_pool=read_pool,
        verifier=None,  # type: ignore[arg-type]
        metrics=ServiceMetrics(),
        relay=None,
        max_message_bytes=1 << 20,
        token_ttl_seconds=900,
        user_id="posts_service",
        broker_users=Settings.from_env({}).broker_users,
    )
