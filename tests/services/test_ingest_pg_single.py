"""A one-message webhook's decisions, which on PostgreSQL the one statement that writes it
makes (weflux.services.ingest.pg_single) and on SQLite Python makes from the sender's
lookup: each pinned on both engines. (The known conversation's counters, latest message
and reopening, and a known sender's new profile name and username: tests/services/
test_ingest.py.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import create_contact
from tests.fixtures.inbound import keyed_number, post_body
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Contact, Conversation, MediaFile, Message, WhatsAppAccount, utcnow
from weflux.services.ingest import pg_single, process

SENDER = "4915100000301"


async def _write(
    client: httpx.AsyncClient,
    number: WhatsAppAccount,
    message: dict[str, Any] | None = None,
    **contact: Any,
) -> None:
    """One message (a text by default) from `SENDER` with its profile `contact`."""
    profile = {"wa_id": SENDER, "name": "Customer"} | contact
    change = wh.messages_change(
        number.phone_number_id,
        messages=[message or wh.text_message(from_wa_id=profile["wa_id"])],
        contacts=[wh.contact(**profile)],
    )
    await post_body(client, number, wh.webhook_body(change))


async def _contacts(db: Database, org_id: uuid.UUID) -> list[Contact]:
    async with db.session(org_id) as session:
        rows = await session.exec(select(Contact).order_by(col(Contact.created_at)))
        return list(rows.all())


async def test_a_new_profile_name_names_a_contact_the_team_did_not_name(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a known sender whose name the team never set,
    when the sender writes with a new profile name, then again with the same one,
    then the contact's profile name and name follow it and `updated_at` moves once."""
    await _write(client, number, name="First")
    (first,) = await _contacts(db, number.org_id)
    assert (first.name, first.profile_name) == ("First", "First")
    await _write(client, number, name="Second")
    (second,) = await _contacts(db, number.org_id)
    assert (second.name, second.profile_name) == ("Second", "Second")
    assert second.updated_at > first.updated_at
    await _write(client, number, name="Second")
    (third,) = await _contacts(db, number.org_id)
    assert third.updated_at == second.updated_at


async def test_opt_out_and_opt_in_keywords_change_a_known_contact(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a known sender,
    when the sender writes STOP, then STOP again, then START, then plain text,
    then the contact is opted out from the first STOP (its time kept by the second, which
    comes with a new name), opted in by START (no time), and plain text changes nothing;
    the keywords alone do not move `updated_at`."""
    await _write(client, number)
    (before,) = await _contacts(db, number.org_id)
    assert (before.opted_out, before.opted_out_at) == (False, None)
    await _write(client, number, wh.text_message(from_wa_id=SENDER, body=" stop "))
    (out,) = await _contacts(db, number.org_id)
    assert out.opted_out is True
    assert out.opted_out_at is not None
    assert out.updated_at == before.updated_at
    await _write(client, number, wh.text_message(from_wa_id=SENDER, body="STOP"), name="New")
    (again,) = await _contacts(db, number.org_id)  # (renamed: its row is written)
    assert (again.opted_out, again.opted_out_at) == (True, out.opted_out_at)
    await _write(client, number, wh.text_message(from_wa_id=SENDER, body="Start"))
    (back,) = await _contacts(db, number.org_id)
    assert (back.opted_out, back.opted_out_at) == (False, None)
    await _write(client, number, wh.text_message(from_wa_id=SENDER, body="please stop by"))
    (still,) = await _contacts(db, number.org_id)
    assert (still.opted_out, still.opted_out_at) == (False, None)


async def test_a_new_sender_s_first_message_may_opt_out(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given no contact,
    when a new sender's first message is STOP,
    then the contact is created opted out."""
    await _write(client, number, wh.text_message(from_wa_id=SENDER, body="STOP"))
    (contact,) = await _contacts(db, number.org_id)
    assert contact.opted_out is True
    assert contact.opted_out_at is not None


async def test_an_erased_contact_is_not_the_sender(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a sender's contact and conversation, since erased,
    when the same number writes again, with another profile name,
    then a new contact and a new conversation hold the message; the erased contact stays
    erased and unchanged."""
    await _write(client, number)
    async with db.session(number.org_id) as session:
        await session.exec(update(Conversation).values(erased_at=utcnow()))
        await session.exec(update(Contact).values(erased_at=utcnow()))
    await _write(client, number, name="Other")
    (contact,) = await _contacts(db, number.org_id)  # the erased one is not seen
    async with db.session(number.org_id) as session:
        (conversation,) = (await session.exec(select(Conversation))).all()
        (message,) = (await session.exec(select(Message))).all()
    assert contact.wa_id == SENDER
    assert conversation.contact_id == contact.id
    assert message.conversation_id == conversation.id
    assert conversation.unread_count == 1
    assert contact.profile_name == "Other"
    async with db.session(number.org_id) as session:
        erased = await session.exec(  # type: ignore[call-overload]
            text("SELECT profile_name FROM contacts WHERE erased_at IS NOT NULL")
        )
        assert list(erased.scalars()) == ["Customer"]  # not renamed


async def test_a_known_sender_on_another_number_gets_a_conversation_there(
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    number: WhatsAppAccount,
) -> None:
    """Given a sender known on one number of the workspace,
    when the sender writes to its second number,
    then the same contact has a second conversation, new and unread, and the first is
    unchanged."""
    second = await keyed_number(
        db, settings, number.org_id, phone_number_id="1098765432", business_account_id="2098"
    )
    await _write(client, number)
    await _write(client, second)
    (contact,) = await _contacts(db, number.org_id)
    async with db.session(number.org_id) as session:
        conversations = (await session.exec(select(Conversation))).all()
    assert sorted((c.account_id, c.contact_id, c.unread_count) for c in conversations) == sorted(
        [(number.id, contact.id, 1), (second.id, contact.id, 1)]
    )


async def test_a_sender_known_by_its_user_id_alone_is_found_by_it(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a contact known by a user id (no WhatsApp id, no phone number) and another
    contact,
    when a message comes from that user id alone, with a username,
    then it is that contact's conversation, and the contact gains the username only."""
    async with db.session(number.org_id) as session:
        by_user = await create_contact(session, wa_id=None, phone_number=None, user_id="US.1")
        await create_contact(session, wa_id=SENDER)
    message = wh.text_message(from_wa_id=None, user_id="US.1")
    await _write(client, number, message, wa_id=None, user_id="US.1", username="@one")
    async with db.session(number.org_id) as session:
        (stored,) = (await session.exec(select(Message))).all()
        conversation = await session.get(Conversation, stored.conversation_id)
        contact = await session.get(Contact, by_user.id)
    assert conversation is not None
    assert contact is not None
    assert conversation.contact_id == by_user.id
    assert (contact.username, contact.wa_id, contact.phone_number) == ("@one", None, None)
    assert len(await _contacts(db, number.org_id)) == 2


async def test_a_known_sender_gains_its_whatsapp_id_and_phone_number(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a contact known by its user id alone (no WhatsApp id, no phone number),
    when the sender writes with the user id and a WhatsApp id,
    then the contact takes the WhatsApp id and its phone number, and `updated_at` moves."""
    async with db.session(number.org_id) as session:
        known = await create_contact(session, wa_id=None, phone_number=None, user_id="US.2")
    stamp = known.updated_at
    message = wh.text_message(from_wa_id=SENDER, user_id="US.2")
    await _write(client, number, message, user_id="US.2")
    (contact,) = await _contacts(db, number.org_id)
    assert contact.id == known.id
    assert (contact.wa_id, contact.phone_number) == (SENDER, f"+{SENDER}")
    assert contact.updated_at > stamp


async def test_a_media_message_s_file_names_its_sender(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a new sender, then a known one,
    when each sends an image,
    then each image's download job names the sender's contact and its message."""
    for n in range(2):
        await _write(client, number, wh.image_message(media_id=f"media-{n}", from_wa_id=SENDER))
    (contact,) = await _contacts(db, number.org_id)
    async with db.session(number.org_id) as session:
        files = (await session.exec(select(MediaFile))).all()
        messages = {m.id: m for m in (await session.exec(select(Message))).all()}
    assert sorted(str(f.wa_media_id) for f in files) == ["media-0", "media-1"]
    for file in files:
        assert file.sender_contact_id == contact.id
        assert file.message_id is not None
        assert messages[file.message_id].media_file_id == file.id


@postgres_only
async def test_the_one_statement_writes_no_contact_row_when_nothing_changes(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount
) -> None:
    """Given a known sender,
    when the sender writes again with the same profile,
    then the contact's row is not rewritten (its row version stays: no UPDATE matched)."""
    await _write(client, number)

    async def version() -> str:
        async with db.session(number.org_id) as session:
            row = await session.exec(text("SELECT xmin::text FROM contacts"))  # type: ignore[call-overload]
            return str(row.scalar_one())

    before = await version()
    await _write(client, number)
    assert await version() == before
    await _write(client, number, name="Renamed")
    assert await version() != before


@postgres_only
async def test_a_sender_stored_while_the_one_statement_waits_is_retried_as_known(
    client: httpx.AsyncClient,
    db: Database,
    number: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a new sender's one message,
    when another transaction stores that sender, committing while the statement that
    writes the message waits on the contacts' unique index (its snapshot did not see it),
    then the statement's INSERT of the contact does nothing, the message finds no
    conversation and the statement fails whole; the event is processed again, reading
    first, and the sender has one contact, one conversation and one message."""
    org_id = number.org_id
    real = pg_single.send
    sent: list[bool] = []

    async def raced(session: Any, event: Any = None) -> bool:
        if sent or not pg_single.held(session.sync_session):
            return await real(session, event)
        sent.append(True)
        async with db.session(org_id) as other:
            await create_contact(other, wa_id=SENDER)  # flushed, not committed
            statement = asyncio.create_task(real(session, event))
            await asyncio.sleep(0.3)
            assert not statement.done()  # waiting on the other's contact
        return await statement  # committed: the statement fails

    attempts: list[bool] = []
    optimistically = process._optimistically

    async def counted(attempt: Any) -> None:
        async def wrapped(optimistic: bool) -> None:
            attempts.append(optimistic)
            await attempt(optimistic)

        await optimistically(wrapped)

    monkeypatch.setattr(pg_single, "send", raced)
    monkeypatch.setattr(process, "_optimistically", counted)
    await _write(client, number)
    assert attempts == [True, False]
    async with db.session(org_id) as session:
        contacts = (await session.exec(select(Contact))).all()
        conversations = (await session.exec(select(Conversation))).all()
        messages = (await session.exec(select(Message))).all()
    assert [c.wa_id for c in contacts] == [SENDER]
    assert [c.contact_id for c in conversations] == [contacts[0].id]
    assert [m.conversation_id for m in messages] == [conversations[0].id]
    assert conversations[0].unread_count == 1
