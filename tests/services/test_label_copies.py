"""A labelling's copies of its conversation's status and assignee (migration 0032), which a
label's inbox page walks with its status and assignee filters: kept true by the database
after every writer (assignment, status, the webhook's reopening, bulk updates, a member's
removal, erasure, a new labelling), and backfilled by the migration, on both engines."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from alembic.script import ScriptDirectory
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls, owner_sql, stored_key
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbound import receive
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.lifecycle.requests import erase_contact
from weflux.migrate import alembic_config, downgrade, migrate
from weflux.models import (
    Conversation,
    ConversationLabel,
    ConversationStatus,
    Label,
    Membership,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.broker import InProcessBroker
from weflux.services import conversations, teamtools
from weflux.services.audit import RequestMeta

REVISION = "0032_label_inbox_status_assignee"


OUT_OF_STEP = (
    "SELECT cl.conversation_id, cl.label_id FROM conversation_labels cl "
    "JOIN conversations c ON c.id = cl.conversation_id "
    "WHERE cl.last_message_at {0} c.last_message_at OR cl.status {0} c.status "
    "OR cl.assignee_membership_id {0} c.assignee_membership_id"
)


async def _out_of_step(database_urls: DatabaseUrls, dialect: str) -> list[Any]:
    """Every labelling (of every workspace, erased conversations' too) whose copies differ
    from its conversation's columns."""
    differs = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    return await owner_sql(database_urls, OUT_OF_STEP.format(differs))


async def _count(database_urls: DatabaseUrls) -> int:
    return int((await owner_sql(database_urls, "SELECT count(*) FROM conversation_labels"))[0][0])


async def test_the_copies_follow_every_writer(
    client: httpx.AsyncClient,
    db: Database,
    database_urls: DatabaseUrls,
    number: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
) -> None:
    """Given customers' conversations with two labels each,
    when the team assigns, unassigns, resolves and parks them, the customer writes again
    (the webhook reopens a resolved conversation), a bulk update changes every status and
    assignee, the assignee is removed from the workspace (the database unassigns), a
    conversation is labelled after all that, and a contact is erased,
    then after each step every labelling holds its conversation's status, assignee and
    last activity; and the Agent's label pages with a status list what the filters say."""
    org_id = number.org_id
    dialect = db.engine.dialect.name
    broker = InProcessBroker()
    by_admin = principal_of(admin)
    now = int(utcnow().timestamp())

    async def in_step(step: str) -> None:
        assert await _out_of_step(database_urls, dialect) == [], step

    await receive(client, number, wh.text_message("wamid.copy-1", body="one", timestamp=now))
    async with db.session(org_id) as session:
        inbound = (await session.exec(select(Conversation))).one()
        others = [await create_conversation(session, account=number) for _ in range(3)]
        vip = await teamtools.create_label(session, by_admin, "vip", "#ff0000")
        later = await teamtools.create_label(session, by_admin, "later", "#00ff00")
        for conversation in (inbound, *others):
            await teamtools.set_conversation_labels(
                session, by_admin, broker, conversation.id, [vip.id, later.id]
            )
    assert await _count(database_urls) == 8
    await in_step("labelled")

    async with db.session(org_id) as session:
        await conversations.assign(
            session, by_admin, inbound.id, agent.membership.id, broker=broker
        )
        await conversations.assign(
            session, by_admin, others[0].id, agent.membership.id, broker=broker
        )
    await in_step("assigned")

    async with db.session(org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        await conversations.assign(session, principal_of(agent), others[0].id, None, broker=broker)
        await conversations.update_status(
            session, principal_of(agent), inbound.id, ConversationStatus.RESOLVED, broker=broker
        )
        await conversations.update_status(
            session, principal_of(agent), others[1].id, ConversationStatus.PENDING, broker=broker
        )
    await in_step("unassigned, resolved, parked")

    async with db.session(org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        page = await conversations.list_conversations(
            session,
            principal_of(agent),
            status=ConversationStatus.RESOLVED,
            assignee=conversations.AssigneeFilter.ME,
            label=vip.id,
        )
    assert [row.id for row, _ in page.items] == [inbound.id]

    await receive(client, number, wh.text_message("wamid.copy-2", body="two", timestamp=now + 60))
    async with db.session(org_id) as session:
        reopened = await session.get(Conversation, inbound.id)
        assert reopened is not None
        assert reopened.status == ConversationStatus.OPEN
    await in_step("the customer wrote again")

    async with db.session(org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id).in_([inbound.id, others[2].id]))
            .values(status=ConversationStatus.PENDING, assignee_membership_id=agent.membership.id)
        )
    await in_step("a bulk update")

    async with db.session(org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        page = await conversations.list_conversations(
            session, principal_of(agent), status=ConversationStatus.PENDING, label=later.id
        )
    assert {row.id for row, _ in page.items} == {inbound.id, others[1].id, others[2].id}

    async with db.session(org_id) as session:
        membership = await session.get(Membership, agent.membership.id)
        assert membership is not None
        await session.delete(membership)
    async with db.session(org_id) as session:
        left = (await session.exec(select(Conversation.assignee_membership_id))).all()
    assert set(left) == {None}
    await in_step("the assignee removed")

    async with db.session(org_id) as session:
        fresh = await create_conversation(
            session, account=number, status=ConversationStatus.PENDING, last_message_at=utcnow()
        )
        await teamtools.set_conversation_labels(session, by_admin, broker, fresh.id, [vip.id])
    await in_step("labelled after its changes")

    async with db.session(org_id) as session:
        erased = await session.get(Conversation, others[1].id)
        assert erased is not None
        await erase_contact(
            session, by_admin, RequestMeta(ip="192.0.2.1"), contact_id=erased.contact_id
        )
    await in_step("a contact erased")
    assert await _count(database_urls) == 9


async def test_the_migration_backfills_and_downgrades(
    database_urls: DatabaseUrls, db: Database, admin: Actor, agent: Actor
) -> None:
    """Given labellings stored before the copies existed (of an assigned PENDING
    conversation and of an unassigned RESOLVED one),
    when the migration runs,
    then each holds its conversation's status and assignee, and the triggers keep them
    so; and downgrading removes the columns again, leaving 0030's copy working."""
    org_id = admin.org_id
    dialect = db.engine.dialect.name
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(REVISION).down_revision
    assert isinstance(previous, str)
    async with db.session(org_id) as session:
        parked = await create_conversation(
            session,
            status=ConversationStatus.PENDING,
            assignee_membership_id=agent.membership.id,
        )
        resolved = await create_conversation(session, status=ConversationStatus.RESOLVED)
        label = Label(org_id=org_id, name="vip", color="#ff0000")
        session.add(label)
    await downgrade(database_urls.owner, previous)
    for conversation in (parked, resolved):
        await owner_sql(
            database_urls,
            "INSERT INTO conversation_labels (id, org_id, conversation_id, label_id) "
            "VALUES (:id, :org, :conversation, :label)",
            id=stored_key(db, uuid.uuid4()),
            org=stored_key(db, org_id),
            conversation=stored_key(db, conversation.id),
            label=stored_key(db, label.id),
        )

    await migrate(database_urls.owner, app_url=database_urls.app)

    async with db.session(org_id) as session:
        copies = {
            row.conversation_id: (row.status, row.assignee_membership_id)
            for row in (await session.exec(select(ConversationLabel))).all()
        }
    assert copies == {
        parked.id: (ConversationStatus.PENDING, agent.membership.id),
        resolved.id: (ConversationStatus.RESOLVED, None),
    }
    async with db.session(org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == resolved.id)
            .values(status=ConversationStatus.OPEN, assignee_membership_id=agent.membership.id)
        )
    assert await _out_of_step(database_urls, dialect) == []

    await downgrade(database_urls.owner, previous)
    columns = await owner_sql(
        database_urls,
        "SELECT name FROM pragma_table_info('conversation_labels')"
        if dialect == "sqlite"
        else "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'conversation_labels'",
    )
    assert {row[0] for row in columns} & {"status", "assignee_membership_id"} == set()
    at = utcnow().replace(microsecond=0)
    async with db.session(org_id) as session:
        await session.exec(
            update(Conversation).where(col(Conversation.id) == parked.id).values(last_message_at=at)
        )
    copied = await owner_sql(
        database_urls,
        "SELECT last_message_at FROM conversation_labels WHERE conversation_id = :id",
        id=stored_key(db, parked.id),
    )
    assert copied
    assert copied[0][0] is not None
    await migrate(database_urls.owner, app_url=database_urls.app)
