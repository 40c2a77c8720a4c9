"""A labelling's copy of its conversation's last activity (migration 0030), which a
label's inbox page walks: kept in step by the database whatever the writer, and
backfilled by the migration."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
from alembic.script import ScriptDirectory
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls, owner_sql, stored_key
from tests.fixtures.factories import Actor, create_contact, create_conversation
from tests.fixtures.inbound import receive
from tests.fixtures.principals import principal_of
from weflux.db import Database
from weflux.migrate import alembic_config, downgrade, migrate
from weflux.models import Conversation, ConversationLabel, Label, WhatsAppAccount, utcnow
from weflux.realtime.broker import InProcessBroker
from weflux.services import teamtools
from weflux.services.conversations import list_conversations

REVISION = "0030_label_inbox_order"


async def _copies(db: Database, org_id: uuid.UUID) -> dict[uuid.UUID, datetime | None]:
    """Each labelling's copy, by its conversation, checked equal to the conversation's."""
    async with db.session(org_id) as session:
        rows = (
            await session.exec(
                select(ConversationLabel.conversation_id, ConversationLabel.last_message_at)
            )
        ).all()
        found = (await session.exec(select(Conversation))).all()
    conversations = {c.id: c.last_message_at for c in found}
    for conversation_id, copied in rows:
        assert copied == conversations[conversation_id], conversation_id
    return dict(rows)


async def test_the_copy_follows_every_writer(
    client: httpx.AsyncClient, db: Database, number: WhatsAppAccount, admin: Actor
) -> None:
    """Given a customer's conversation and a label,
    when the team labels it, the customer writes again (the webhook's writes: on
    PostgreSQL its one folded statement), the team changes its activity through the
    ORM, and a labelling is bulk-inserted with no value,
    then every labelling holds its conversation's last activity after each, and the
    conversation leads its label's first page once it is the newest."""
    org_id = number.org_id
    broker = InProcessBroker()
    now = int(utcnow().timestamp())
    await receive(client, number, wh.text_message("wamid.lab-1", body="one", timestamp=now))
    async with db.session(org_id) as session:
        conversation = (await session.exec(select(Conversation))).one()
        vip = await teamtools.create_label(session, principal_of(admin), "vip", "#ff0000")
        other = await teamtools.create_label(session, principal_of(admin), "other", "#00ff00")
        await teamtools.set_conversation_labels(
            session, principal_of(admin), broker, conversation.id, [vip.id]
        )
    first = (await _copies(db, org_id))[conversation.id]
    assert first is not None

    await receive(client, number, wh.text_message("wamid.lab-2", body="two", timestamp=now + 60))
    second = (await _copies(db, org_id))[conversation.id]
    assert second is not None
    assert second > first

    later = utcnow() + timedelta(hours=1)
    async with db.session(org_id) as session:
        row = await session.get(Conversation, conversation.id)
        assert row is not None
        row.last_message_at = later
    assert (await _copies(db, org_id))[conversation.id] == later

    async with db.session(org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == conversation.id)
            .values(last_message_at=None)
        )
    assert (await _copies(db, org_id))[conversation.id] is None

    async with db.session(org_id) as session:
        contact = await create_contact(session)
        newest = await create_conversation(
            session, contact=contact, account=number, last_message_at=later
        )
        session.add(ConversationLabel(conversation_id=newest.id, label_id=other.id))
        session.add(ConversationLabel(conversation_id=conversation.id, label_id=other.id))
    copies = await _copies(db, org_id)
    assert copies[newest.id] == later
    async with db.session(org_id) as session:
        page = await list_conversations(session, principal_of(admin), first=1, label=other.id)
    assert [row.id for row, _ in page.items] == [newest.id]
    assert page.has_next_page


async def test_the_migration_backfills_and_downgrades(
    database_urls: DatabaseUrls, db: Database, admin: Actor
) -> None:
    """Given labellings stored before the copy existed (one of a conversation without a
    message yet),
    when the migration runs,
    then each holds its conversation's last activity, and the triggers keep it so; and
    downgrading removes the column again."""
    org_id = admin.org_id
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(REVISION).down_revision
    assert isinstance(previous, str)
    at = utcnow().replace(microsecond=0)
    async with db.session(org_id) as session:
        dated = await create_conversation(session, last_message_at=at)
        undated = await create_conversation(session)
        label = Label(org_id=org_id, name="vip", color="#ff0000")
        session.add(label)
    await downgrade(database_urls.owner, previous)
    for conversation in (dated, undated):
        await owner_sql(
            database_urls,
            "INSERT INTO conversation_labels (id, org_id, conversation_id, label_id) "
            "VALUES (:id, :org, :conversation, :label)",
            id=uuid.uuid4().hex if db.engine.dialect.name == "sqlite" else uuid.uuid4(),
            org=stored_key(db, org_id),
            conversation=stored_key(db, conversation.id),
            label=stored_key(db, label.id),
        )

    await migrate(database_urls.owner, app_url=database_urls.app)

    copies = await _copies(db, org_id)
    assert copies == {dated.id: at, undated.id: None}
    async with db.session(org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == undated.id)
            .values(last_message_at=at)
        )
    assert (await _copies(db, org_id))[undated.id] == at

    await downgrade(database_urls.owner, previous)
    columns = await owner_sql(
        database_urls,
        "SELECT name FROM pragma_table_info('conversation_labels')"
        if db.engine.dialect.name == "sqlite"
        else "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'conversation_labels'",
    )
    assert "last_message_at" not in {row[0] for row in columns}
    await migrate(database_urls.owner, app_url=database_urls.app)
