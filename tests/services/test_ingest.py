"""Inbound messages written with Core statements (weflux.services.ingest): what the ORM's
unit of work did before, each pinned: feed positions, a known conversation's counters and
status, the sender's contact, multi-message events."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.util import await_
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import create_contact
from tests.fixtures.inbound import feed_highest, post_body, receive
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Message,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.broker import InProcessBroker
from weflux.services import ingest
from weflux.services.ingest import inbound, process, senders


async def _state(db: Database, org_id: uuid.UUID) -> tuple[Conversation, list[Message]]:
    async with db.session(org_id) as session:
        conversation = (await session.exec(select(Conversation))).one()
        messages = (await session.exec(select(Message).order_by(col(Message.update_seq)))).all()
    return conversation, list(messages)


def _text(wamid: str, body: str, at: int) -> dict[str, Any]:
    return wh.text_message(wamid, body=body, timestamp=at)


async def test_rows_take_feed_positions_as_the_flush_did(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount, dialect: str
) -> None:
    """Given a workspace whose feed is at position h,
    when a new sender writes, the team then changes the conversation (an ORM flush), and
    the sender writes again,
    then the conversation and message take the next positions in that order (on SQLite
    exactly h+1, h+2, then h+3 for the team's change, h+4 and h+5: no position reused),
    and each message's created_seq is its update_seq."""
    org_id = number.org_id
    highest = await feed_highest(db, org_id)
    now = int(utcnow().timestamp())
    await receive(client, number, _text("wamid.feed-1", "first", now))
    conversation, (first,) = await _state(db, org_id)
    assert highest < conversation.update_seq < first.update_seq == first.created_seq
    async with db.session(org_id) as session:
        row = (await session.exec(select(Conversation))).one()
        row.status = ConversationStatus.PENDING
    changed, _ = await _state(db, org_id)
    assert changed.update_seq > first.update_seq
    await receive(client, number, _text("wamid.feed-2", "second", now + 1))
    again, (_, second) = await _state(db, org_id)
    assert changed.update_seq < again.update_seq < second.update_seq == second.created_seq
    if dialect == "sqlite":
        positions = [
            conversation.update_seq,
            first.update_seq,
            changed.update_seq,
            again.update_seq,
            second.update_seq,
        ]
        assert positions == [highest + n for n in range(1, 6)]


async def test_a_known_conversation_counts_shows_the_latest_and_reopens_only_resolved(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a conversation with one message,
    when a newer message comes, then an older one delivered late,
    then both count as unread, the newer stays the last message, the last inbound time is
    the newest, a PENDING conversation stays PENDING and a RESOLVED one is reopened."""
    org_id = number.org_id
    now = int(utcnow().timestamp())
    await receive(client, number, _text("wamid.k-1", "one", now))
    before, _ = await _state(db, org_id)
    async with db.session(org_id) as session:
        (await session.exec(select(Conversation))).one().status = ConversationStatus.PENDING
    await receive(client, number, _text("wamid.k-3", "three", now + 60))
    await receive(client, number, _text("wamid.k-2", "two", now - 60))
    after, messages = await _state(db, org_id)
    by_text = {m.text: m for m in messages}
    assert after.unread_count == 3
    assert after.last_message_id == by_text["three"].id
    assert after.last_message_at == by_text["three"].created_at
    assert after.last_inbound_at == by_text["three"].created_at
    assert after.status == ConversationStatus.PENDING
    assert before.updated_at < after.updated_at
    async with db.session(org_id) as session:
        (await session.exec(select(Conversation))).one().status = ConversationStatus.RESOLVED
    await receive(client, number, _text("wamid.k-4", "four", now + 120))
    reopened, _ = await _state(db, org_id)
    assert (reopened.status, reopened.unread_count) == (ConversationStatus.OPEN, 4)


async def test_a_known_senders_profile_name_and_username_change_their_contact(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a contact the team renamed,
    when the sender writes with a new profile name and a username,
    then the profile name and username change, the team's name stays, and one contact."""
    org_id = number.org_id
    await receive(client, number, wh.text_message("wamid.n-1"))
    async with db.session(org_id) as session:
        contact = (await session.exec(select(Contact))).one()
        contact.name, contact.name_set_by_team = "Our VIP", True
    stamp = contact.updated_at
    change = wh.messages_change(
        number.phone_number_id,
        messages=[wh.text_message("wamid.n-2")],
        contacts=[wh.contact(name="New Profile", username="@vip")],
    )
    await post_body(client, number, wh.webhook_body(change))
    async with db.session(org_id) as session:
        (contact,) = (await session.exec(select(Contact))).all()
    assert (contact.name, contact.profile_name, contact.username) == (
        "Our VIP",
        "New Profile",
        "@vip",
    )
    assert contact.updated_at > stamp


async def test_one_event_of_several_senders_and_messages(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount, dialect: str
) -> None:
    """Given one webhook with three messages of two new senders,
    then two contacts, two conversations (unread 2 and 1) and three messages are stored,
    each with its own feed position (on SQLite consecutive ones)."""
    org_id = number.org_id
    highest = await feed_highest(db, org_id)
    now = int(utcnow().timestamp())
    change = wh.messages_change(
        number.phone_number_id,
        messages=[
            wh.text_message("wamid.m-1", from_wa_id="4915100000001", timestamp=now),
            wh.text_message("wamid.m-2", from_wa_id="4915100000002", timestamp=now + 1),
            wh.text_message("wamid.m-3", from_wa_id="4915100000001", timestamp=now + 2),
        ],
        contacts=[wh.contact(wa_id="4915100000001"), wh.contact(wa_id="4915100000002")],
    )
    await post_body(client, number, wh.webhook_body(change))
    async with db.session(org_id) as session:
        contacts = (await session.exec(select(Contact))).all()
        conversations = (await session.exec(select(Conversation))).all()
        messages = (await session.exec(select(Message))).all()
    assert len(contacts) == 2
    assert sorted(c.unread_count for c in conversations) == [1, 2]
    assert len(messages) == 3
    positions = sorted([c.update_seq for c in conversations] + [m.update_seq for m in messages])
    assert len(set(positions)) == 5
    assert positions[0] > highest
    if dialect == "sqlite":
        assert positions == [highest + n for n in range(1, 6)]


@postgres_only
async def test_a_new_sender_stored_meanwhile_by_another_event_is_retried_as_known(
    client: httpx.AsyncClient,
    db: Database,
    number: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a new sender's first two messages in one event, processed optimistically,
    when another transaction stores that sender between this one's lookup and its write
    (the contact, conversation, messages and event rows folded into one statement),
    then that statement breaks the contacts' unique index and writes nothing, the event
    is processed again reading first, and the sender has one contact, one conversation
    and the two messages. (One message has no lookup of its own on PostgreSQL: its race,
    tests/services/test_ingest_pg_single.py.)"""
    org_id, sender = number.org_id, "4915100000077"
    lookups: list[int] = []
    real = senders._senders

    async def store_the_sender() -> None:
        async with db.session(org_id) as session:
            await create_contact(session, wa_id=sender)

    def raced(*args: Any) -> Any:  # in SQLAlchemy's greenlet (the share's `run_sync`)
        found = real(*args)
        lookups.append(len(found[0]))
        if len(lookups) == 1:
            await_(store_the_sender())
        return found

    monkeypatch.setattr(inbound, "_senders", raced)
    now = int(utcnow().timestamp())
    await receive(
        client,
        number,
        wh.text_message("wamid.race-1", from_wa_id=sender, timestamp=now),
        wh.text_message("wamid.race-2", from_wa_id=sender, timestamp=now + 1),
    )
    assert lookups == [0, 1]  # new at first, known on the retry
    async with db.session(org_id) as session:
        contacts = (await session.exec(select(Contact))).all()
        conversations = (await session.exec(select(Conversation))).all()
        messages = (await session.exec(select(Message))).all()
    assert [c.wa_id for c in contacts] == [sender]
    assert [c.contact_id for c in conversations] == [contacts[0].id]
    assert sorted((m.wa_message_id, m.conversation_id) for m in messages) == [
        ("wamid.race-1", conversations[0].id),
        ("wamid.race-2", conversations[0].id),
    ]


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("plain, ação, 😀", None),  # Meta escapes the emoji as a surrogate pair: no walk
        ("a\x00b", "ab"),
        # Lone surrogates, built (a linter reads them all as one unknown string)
        ("a" + chr(0xD800) + "b", "a\ufffdb"),
        (chr(0xDC00) + chr(0xD83D), "\ufffd\ufffd"),
        (chr(0xD800) * 2, "\ufffd\ufffd"),
    ],
)
@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "in-the-bytes"])
def test_only_bodies_with_unstorable_text_are_walked_and_cleaned(
    text: str, cleaned: str | None, escaped: bool
) -> None:
    """Given a body escaped as Meta escapes it, or with its characters as bytes (a lone
    surrogate as CESU-8 bytes, which `json.loads` decodes),
    then only one whose strings hold a NUL or a lone surrogate matches (a plain body costs
    one search), and cleaning it leaves text both engines store."""
    body = {"entry": [{"t": text, text: [text]}]}
    raw = json.dumps(body, ensure_ascii=escaped).encode("utf-8", "surrogatepass")
    assert json.loads(raw) == body
    assert bool(process._UNSTORABLE_TEXT.search(raw)) is (cleaned is not None)
    if cleaned is not None:
        assert process._storable(json.loads(raw)) == {"entry": [{"t": cleaned, cleaned: [cleaned]}]}


async def test_the_same_new_message_delivered_at_once_to_two_processes_is_stored_once(
    db: Database, database_urls: DatabaseUrls, settings: Settings, number: WhatsAppAccount
) -> None:
    """Given two server processes (two pools), and a new sender's message,
    when Meta delivers it to both at once, several times (a replay race),
    then every delivery is processed without an error (each answered 200) and the sender
    has one contact, one conversation and one message; every event is kept."""
    other = Database(database_urls.app)
    try:
        change = wh.messages_change(
            messages=[wh.text_message("wamid.replayed", from_wa_id="4915100000088")],
            contacts=[wh.contact(wa_id="4915100000088")],
        )
        body = wh.encode(wh.webhook_body(change))
        broker = InProcessBroker()
        deliveries = [
            ingest.store_and_process(
                server, broker, settings, ingest.ReceivedEvent.of(body, number.id)
            )
            for _ in range(3)
            for server in (db, other)
        ]
        async with asyncio.timeout(60):
            outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        assert outcomes == [None] * 6
    finally:
        await other.dispose()
    async with db.session(number.org_id) as session:
        contacts = (await session.exec(select(Contact))).all()
        conversations = (await session.exec(select(Conversation))).all()
        messages = (await session.exec(select(Message))).all()
    assert [c.wa_id for c in contacts] == ["4915100000088"]
    assert len(conversations) == 1
    assert [m.wa_message_id for m in messages] == ["wamid.replayed"]
    assert conversations[0].unread_count == 1
