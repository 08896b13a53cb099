"""Replacing an AMQP channel: how often a nack may renew one, and letting go of the old one.

RabbitMQ 3.10 can nack every publish on a channel for good after a quorum queue's leader moves,
while a new channel on the same connection is acked at once (OPERATIONS.md, "Running on a
RabbitMQ cluster"). So whoever publishes with confirms and gets a nack tries a new channel: the
command client (shared/client.py), the outbox relay (shared/outbox.py) and the runner's parking
(shared/runner.py).
"""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractChannel

log = logging.getLogger(__name__)

#: The least time between two renewals of a channel for a nack: when the broker refuses for a
#: while (a queue electing its leader, a full dead-letter queue), one new channel a second is enough.
RENEW_SECONDS = 1.0


async def close_quietly(channel: AbstractChannel) -> None:
    """Close a channel we are done with. Closed already (the broker went) or not, a robust
    channel is closed again: that is what keeps the connection from restoring it."""
    try:
        await channel.close()
    except Exception as exc:  # noqa: BLE001 - whatever it was, the channel is no use to us now
        log.debug("closing a stale channel failed", extra={"error": repr(exc)})
