"""The command envelope as the contract states it, straight through the broker.

- "every command carries a `message_id`; one without is malformed (400)": it is answered 400 and
  parked with the reason, never executed (before, it ran and silently skipped idempotency);
- "an AMQP byte-array value is read as UTF-8": Node's Buffer, Go's []byte and pika's bytes arrive
  as a byte array (aio-pika sends a `bytearray` as one), and before they read as a missing header;
  one that is not UTF-8 is a clear 401, not a mystery.
"""

from __future__ import annotations

from uuid import uuid4

import aio_pika
import pytest

from shared.envelope import HeaderNotText, header_hint, header_text
from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.test_malformed_input import assert_error_reply, header


@pytest.mark.parametrize("message_id", [None, ""], ids=["absent", "empty"])
async def test_a_command_without_a_message_id_is_malformed(broker: BrokerProbe, db, new_user, message_id) -> None:
    user: User = await new_user("no-id")
    title = f"no-id-{uuid4().hex}"
    await broker.dead_letters("posts.commands")

    reply = await broker.command(
        "create-post", {"title": title, "body": "b"}, token=user.token, properties={"message_id": message_id}, bare=True
    )

    assert_error_reply(reply, 400)
    assert reply is not None and "message_id" in reply["error"]["detail"]
    dead = await broker.parked("posts.commands", lambda m: title.encode() in m.body, timeout=3.0)
    assert "message_id" in (header(dead, "x-dead-letter-reason") or "")
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 0

    control = await broker.command("create-post", {"title": title, "body": "b"}, token=user.token)
    assert control is not None and control["ok"] is True, control


async def test_a_public_read_without_a_message_id_is_malformed_too(broker: BrokerProbe) -> None:
    reply = await broker.command("list-posts", {"limit": 1}, properties={"message_id": None}, bare=True)
    assert_error_reply(reply, 400)


async def test_a_byte_array_authorization_header_is_read_as_utf8(broker: BrokerProbe, db, new_user) -> None:
    user: User = await new_user("bytes")
    bearer = bytearray(f"Bearer {user.token}".encode())

    me = await broker.command("get-me", {}, headers={"authorization": bearer})
    assert me is not None and me["ok"] is True, me
    assert me["result"]["id"] == user.id

    request_id, message_id = f"bytes-{uuid4().hex}", str(uuid4())
    post = await broker.command(
        "create-post",
        {"title": "bytes", "body": "b"},
        headers={"authorization": bearer, "x-request-id": bytearray(request_id.encode())},
        message_id=message_id,
    )
    assert post is not None and post["ok"] is True, post
    assert post["result"]["author_id"] == user.id
    # The byte-array request id is the one the decision is filed under.
    assert await db.fetchval("SELECT request_id FROM posts.audit_log WHERE message_id = $1", message_id) == request_id


async def test_an_authorization_header_that_is_not_utf8_is_a_clear_401(broker: BrokerProbe, db) -> None:
    title = f"not-utf8-{uuid4().hex}"
    reply = await broker.command("create-post", {"title": title, "body": "b"}, headers={"authorization": bytearray(b"Bearer \xff\xfe\xfd")})
    assert_error_reply(reply, 401)
    assert reply is not None and "UTF-8" in reply["error"]["detail"]
    assert await db.fetchval("SELECT count(*) FROM posts.posts WHERE title = $1", title) == 0


async def test_an_unknown_command_is_unroutable_and_mandatory_says_so(broker: BrokerProbe) -> None:
    """No queue is bound for a name nobody declared, so no service can answer it: RabbitMQ drops
    it silently unless it is published `mandatory`, and then hands it back (basic.return)."""
    channel = await broker.open_channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange("commands", ensure=False)
        message = aio_pika.Message(b"{}", content_type="application/json", message_id=str(uuid4()), type="nuke-everything")
        with pytest.raises(aio_pika.exceptions.PublishError):
            await exchange.publish(message, routing_key="nuke-everything", mandatory=True)
    finally:
        await channel.close()


@pytest.mark.unit
def test_header_text_reads_strings_and_byte_arrays() -> None:
    assert header_text({"a": "x"}, "a") == "x"
    assert header_text({"a": bytearray("é".encode())}, "a") == "é"
    assert header_text({"a": "é".encode()}, "a") == "é"  # a long string that pamqp could not decode
    assert header_text({}, "a") is None
    for bad in (bytearray(b"\xff"), b"\xff", 5, {"nested": "table"}):
        with pytest.raises(HeaderNotText):
            header_text({"a": bad}, "a")
        assert header_hint({"a": bad}, "a") is None
