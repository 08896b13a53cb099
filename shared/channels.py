"""Letting go of an AMQP channel we are done with (one a nack or a reconnect replaced)."""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractChannel

log = logging.getLogger(__name__)


async def close_quietly(channel: AbstractChannel) -> None:
    """Close a channel we are done with. Closed already (the broker went) or not, a robust
    channel is closed again: that is what keeps the connection from restoring it."""
    try:
        await channel.close()
    except Exception as exc:  # noqa: BLE001 - whatever it was, the channel is no use to us now
        log.debug("closing a stale channel failed", extra={"error": repr(exc)})
