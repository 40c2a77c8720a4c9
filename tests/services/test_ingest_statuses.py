"""Status webhooks written with Core statements (weflux.services.ingest): what the ORM's
unit of work did before, each pinned (these tests pass on the ORM path too): the order
of an event's statuses, duplicates, failures, the lost wamid, other workspaces' messages
and, on SQLite, the feed positions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.inbound import (
    feed_highest,
    keyed_number,
    outbound_message,
    post_body,
    receive,
    stored_message,
)
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Conversation,
    Message,
    MessageStatus,
    Organization,
    WhatsAppAccount,
    utcnow,
)


async def _statuses(
    client: httpx.AsyncClient, number: WhatsAppAccount, *statuses: dict[str, Any]
) -> None:
    change = wh.messages_change(number.phone_number_id, statuses=list(statuses))
    await post_body(client, number, wh.webhook_body(change))


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


async def test_an_events_statuses_apply_in_timestamp_order(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a sent message,
    when one event lists its read status before its delivered one (read is later),
    then it is read, at the read status's time."""
    now = int(utcnow().timestamp())
    await receive(client, number, wh.text_message())
    wamid = wh.new_wamid()
    message = await outbound_message(db, number.org_id, wamid)
    await _statuses(
        client,
        number,
        wh.status(wamid, "read", timestamp=now + 20),
        wh.status(wamid, "delivered", timestamp=now + 10),
    )
    stored = await stored_message(db, message)
    assert (stored.status, stored.status_updated_at) == (MessageStatus.READ, _at(now + 20))


async def test_a_duplicate_status_changes_nothing(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a message Meta said was delivered,
    when the same delivered status comes again (and then an earlier sent),
    then the message is not written again: same status, time and feed position."""
    now = int(utcnow().timestamp())
    await receive(client, number, wh.text_message())
    wamid = wh.new_wamid()
    message = await outbound_message(db, number.org_id, wamid)
    delivered = wh.status(wamid, "delivered", timestamp=now)
    await _statuses(client, number, delivered)
    first = await stored_message(db, message)
    await _statuses(client, number, delivered)
    await _statuses(client, number, wh.status(wamid, "sent", timestamp=now - 5))
    again = await stored_message(db, message)
    assert first.status == again.status == MessageStatus.DELIVERED
    assert (again.status_updated_at, again.update_seq) == (_at(now), first.update_seq)
    assert first.update_seq > first.created_seq


async def test_a_failed_status_records_the_first_error_truncated(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given two sent messages,
    when one fails with a 600-character title and the other with a message but no title,
    then each keeps the first error's code and its title (or message) cut to 500."""
    await receive(client, number, wh.text_message())
    long_wamid, plain_wamid = wh.new_wamid(), wh.new_wamid()
    long = await outbound_message(db, number.org_id, long_wamid)
    plain = await outbound_message(db, number.org_id, plain_wamid)
    untitled = {"code": 131047, "message": "Re-engagement message"}
    await _statuses(
        client,
        number,
        wh.status(long_wamid, "failed", errors=[wh.error(131026, "x" * 600), wh.error(1, "y")]),
        wh.status(plain_wamid, "failed", errors=[untitled]),
    )
    failed_long, failed_plain = await stored_message(db, long), await stored_message(db, plain)
    assert (failed_long.status, failed_long.error_code) == (MessageStatus.FAILED, 131026)
    assert failed_long.error_title == "x" * 500
    assert (failed_plain.status, failed_plain.error_code) == (MessageStatus.FAILED, 131047)
    assert failed_plain.error_title == "Re-engagement message"


async def test_a_lost_wamid_is_filled_even_when_the_status_moves_nothing(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a delivered message whose send response was lost (no wamid),
    when a sent status names it by callback data,
    then its wamid is filled, its status and times unchanged, and a later read status
    finds it by that wamid."""
    now = int(utcnow().timestamp())
    await receive(client, number, wh.text_message())
    before = utcnow().replace(microsecond=0)
    message = await outbound_message(
        db, number.org_id, None, MessageStatus.DELIVERED, status_updated_at=before
    )
    wamid = wh.new_wamid()
    await _statuses(
        client, number, wh.status(wamid, "sent", biz_opaque_callback_data=str(message.id))
    )
    filled = await stored_message(db, message)
    assert (filled.wa_message_id, filled.status) == (wamid, MessageStatus.DELIVERED)
    assert filled.status_updated_at == before
    assert filled.update_seq > filled.created_seq
    await _statuses(client, number, wh.status(wamid, "read", timestamp=now + 30))
    assert (await stored_message(db, message)).status == MessageStatus.READ


async def test_a_status_never_reaches_another_workspaces_message(
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    number: WhatsAppAccount,
    other_org: Organization,
) -> None:
    """Given another workspace's sent message (its wamid and id known),
    when this workspace's number gets statuses naming that wamid, and that id as
    callback data,
    then the other workspace's message is unchanged."""
    theirs_number = await keyed_number(
        db, settings, other_org.id, phone_number_id="998877665544", business_account_id="77"
    )
    await receive(client, theirs_number, wh.text_message())
    await receive(client, number, wh.text_message())
    wamid = wh.new_wamid()
    theirs = await outbound_message(db, other_org.id, wamid)
    before = await stored_message(db, theirs)
    await _statuses(
        client,
        number,
        wh.status(wamid, "read"),
        wh.status(wh.new_wamid(), "failed", biz_opaque_callback_data=str(theirs.id)),
    )
    after = await stored_message(db, theirs)
    assert (after.status, after.wa_message_id, after.update_seq, after.error_code) == (
        MessageStatus.SENT,
        wamid,
        before.update_seq,
        None,
    )


async def test_a_status_never_reaches_an_erased_conversations_message(
    client: httpx.AsyncClient, db: Database, owner_db: Database, number: WhatsAppAccount
) -> None:
    """Given two sent messages, one with its wamid and one without, in a conversation
    since erased,
    when statuses name the first by wamid and the second by callback data,
    then neither changes (the erasure tombstone hides them)."""
    await receive(client, number, wh.text_message())
    wamid = wh.new_wamid()
    named = await outbound_message(db, number.org_id, wamid)
    lost = await outbound_message(db, number.org_id, None)
    async with db.session(number.org_id) as session:
        await session.exec(update(Conversation).values(erased_at=utcnow()))
    await _statuses(
        client,
        number,
        wh.status(wamid, "read"),
        wh.status(wh.new_wamid(), "failed", biz_opaque_callback_data=str(lost.id)),
    )
    async with owner_db.session(all_workspaces="inspect an erased conversation") as session:
        rows = {
            m.id: (m.status, m.wa_message_id)
            for m in (await session.exec(select(Message))).all()
            if m.id in {named.id, lost.id}
        }
    assert rows == {named.id: (MessageStatus.SENT, wamid), lost.id: (MessageStatus.SENT, None)}


async def test_changed_messages_take_the_next_feed_positions_in_id_order(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount, dialect: str
) -> None:
    """Given three sent messages and a workspace feed at position h,
    when one event delivers all three and a later one reads the first,
    then each changed message takes a new position above h (on SQLite exactly h+1..h+3
    in id order, as the flush numbered them, then h+4), created_seq unchanged."""
    await receive(client, number, wh.text_message())
    wamids = [wh.new_wamid() for _ in range(3)]
    messages = [await outbound_message(db, number.org_id, wamid) for wamid in wamids]
    created = {m.id: (await stored_message(db, m)).created_seq for m in messages}
    highest = await feed_highest(db, number.org_id)
    await _statuses(client, number, *(wh.status(w, "delivered") for w in reversed(wamids)))
    delivered = [await stored_message(db, m) for m in messages]
    assert all(m.update_seq > highest for m in delivered)
    assert {m.id: m.created_seq for m in delivered} == created
    await _statuses(client, number, wh.status(wamids[0], "read"))
    read = await stored_message(db, messages[0])
    assert read.update_seq > max(m.update_seq for m in delivered)
    if dialect == "sqlite":
        in_id_order = sorted(delivered, key=lambda m: m.id)
        assert [m.update_seq for m in in_id_order] == [highest + n for n in (1, 2, 3)]
        assert read.update_seq == highest + 4


async def test_an_event_of_a_message_and_a_status_takes_distinct_positions(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount, dialect: str
) -> None:
    """Given a sent message and a workspace feed at position h,
    when one event brings the customer's reply and the sent message's delivered status,
    then the conversation, the reply and the delivered message each take a new position
    (on SQLite h+1, h+2, h+3 in that order, as before)."""
    await receive(client, number, wh.text_message())
    wamid = wh.new_wamid()
    sent = await outbound_message(db, number.org_id, wamid)
    highest = await feed_highest(db, number.org_id)
    change = wh.messages_change(
        number.phone_number_id,
        messages=[wh.text_message(body="thanks")],
        contacts=[wh.contact()],
        statuses=[wh.status(wamid, "delivered")],
    )
    await post_body(client, number, wh.webhook_body(change))
    async with db.session(number.org_id) as session:
        conversation = (await session.exec(select(Conversation))).one()
        reply = (await session.exec(select(Message).where(Message.text == "thanks"))).one()
    delivered = await stored_message(db, sent)
    assert delivered.status == MessageStatus.DELIVERED
    positions = [conversation.update_seq, reply.update_seq, delivered.update_seq]
    assert len(set(positions)) == 3
    assert min(positions) > highest
    if dialect == "sqlite":
        assert positions == [highest + n for n in (1, 2, 3)]
