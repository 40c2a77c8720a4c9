"""An Agent's restriction (assigned to them or to nobody) is bounded: a read of one
conversation's messages finds the conversation by its primary key, never by reading
every conversation of the workspace (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
PostgreSQL with statistics); an Agent's inbox list keeps its index."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.factories import Actor
from tests.fixtures.plans import (
    analyze,
    big_workspace,
    explained,
    prefer_indexes,
    workspace_reads,
)
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import Contact, Conversation, Message, Note, Organization, utcnow
from weflux.services.conversations import list_messages


async def _assigned_thirds(
    db: Database, owner_db: Database, org: Organization, *agents: Actor
) -> None:
    """A third of the workspace's conversations assigned to each of `agents` (by id
    order), the rest to nobody; statistics gathered again (PostgreSQL)."""
    async with db.session(org.id) as session:
        ids = sorted((await session.exec(select(col(Conversation.id)))).all())
        for n, actor in enumerate(agents):
            share = ids[n :: len(agents) + 1]
            await session.exec(
                update(Conversation)
                .where(col(Conversation.id).in_(share))
                .values(assignee_membership_id=actor.membership.id)
            )
    async with owner_db.engine.connect() as connection:
        await analyze(connection)


async def test_an_agents_history_read_finds_its_conversation_by_key(
    db: Database, owner_db: Database, org: Organization, agent: Actor, other_agent: Actor
) -> None:
    """Given a workspace of 960 messages in 120 conversations, a third assigned to the
    Agent, a third to another Agent,
    when the Agent reads one conversation's history, its notes and its contact, and a
    live event's message with its conversation,
    then no step reads every conversation or message of the workspace: the Agent's
    condition looks the conversation up by its primary key."""
    messages = await big_workspace(db, owner_db, org.id)
    await _assigned_thirds(db, owner_db, org, agent, other_agent)
    conversation = messages[-1].conversation_id
    async with db.session(org.id) as session:
        row = await session.get(Conversation, conversation)
        assert row is not None
        contact = row.contact_id
    async with db.session(org.id) as session:
        restrict_to_agent(session, agent.membership.id)
        await prefer_indexes(await session.connection())
        with explained(db) as plans:
            await list_messages(session, conversation)
            await session.exec(select(Note).where(col(Note.conversation_id) == conversation))
            await session.exec(select(Contact).where(col(Contact.id).in_([contact])))
            # A live messageAdded's read for an Agent (weflux.gql.live).
            await session.exec(
                select(Message, Conversation)
                .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
                .where(col(Message.id) == messages[-1].id)
            )
    assert len(plans) == 4
    for plan in plans:
        assert workspace_reads(plan) == [], "\n".join(plan)


async def test_an_agents_lists_read_in_the_order_of_an_index(
    db: Database, owner_db: Database, org: Organization, agent: Actor, other_agent: Actor
) -> None:
    """Given the same workspace,
    when the Agent lists their inbox (newest activity first) and their contacts (by
    name), a page each,
    then each is read by an index (no sort of all the workspace's rows on SQLite, no
    sequential scan on PostgreSQL), a contact's visible conversations looked up by the
    contact, and no message is read."""
    await big_workspace(db, owner_db, org.id)
    await _assigned_thirds(db, owner_db, org, agent, other_agent)
    inbox = (
        select(Conversation)
        .order_by(
            col(Conversation.last_message_at).desc().nulls_last(), col(Conversation.id).desc()
        )
        .limit(21)
    )
    contacts = (
        select(Contact).order_by(col(Contact.name).asc().nulls_last(), col(Contact.id)).limit(21)
    )
    async with db.session(org.id) as session:
        restrict_to_agent(session, agent.membership.id)
        await prefer_indexes(await session.connection())
        with explained(db) as plans:
            for query in (inbox, contacts):
                await session.exec(query)
    contacts_plan = plans[1]
    for plan in plans:
        assert not any("messages" in line or "Seq Scan" in line for line in plan), "\n".join(plan)
        assert not any("TEMP B-TREE FOR ORDER BY" in line for line in plan), "\n".join(plan)
    # A contact's visible conversations by uq_conversations_org_id_contact_id_account_id.
    assert workspace_reads(contacts_plan) == [], "\n".join(contacts_plan)


async def test_an_agent_sees_the_messages_and_contacts_of_their_and_unassigned_conversations(
    db: Database, owner_db: Database, org: Organization, agent: Actor, other_agent: Actor
) -> None:
    """Given 6 conversations (a contact each), 2 assigned to the Agent, 2 to another
    Agent, 2 to nobody,
    when each Agent reads messages (all, one conversation's, by id) and contacts,
    then exactly those of their own and unassigned conversations; reassigned, a
    conversation's messages and contact move from one Agent to the other; erased, they
    are gone for both."""
    messages = await big_workspace(db, owner_db, org.id, conversations=6, messages_each=2, erased=0)
    await _assigned_thirds(db, owner_db, org, agent, other_agent)
    async with db.session(org.id) as session:
        rows = (await session.exec(select(Conversation))).all()
    contact_of = {c.id: c.contact_id for c in rows}
    mine, theirs = (
        {c.id for c in rows if c.assignee_membership_id == actor.membership.id}
        for actor in (agent, other_agent)
    )
    nobodys = {c.id for c in rows if c.assignee_membership_id is None}
    assert [len(mine), len(theirs), len(nobodys)] == [2, 2, 2]

    async def seen(actor: Actor, *criteria: object) -> set[uuid.UUID]:
        async with db.session(org.id) as session:
            restrict_to_agent(session, actor.membership.id)
            query = select(col(Message.id)).where(*criteria)  # type: ignore[arg-type]
            return set((await session.exec(query)).all())

    async def contacts(actor: Actor) -> set[uuid.UUID]:
        async with db.session(org.id) as session:
            restrict_to_agent(session, actor.membership.id)
            return set((await session.exec(select(col(Contact.id)))).all())

    async def check(actor: Actor, visible: set[uuid.UUID]) -> None:
        assert await seen(actor) == {m.id for m in messages if m.conversation_id in visible}
        assert await contacts(actor) == {contact_of[c] for c in visible}
        for conversation in contact_of:
            wanted = {m.id for m in messages if m.conversation_id == conversation}
            got = await seen(actor, col(Message.conversation_id) == conversation)
            assert got == (wanted if conversation in visible else set())
        hidden = next(m for m in messages if m.conversation_id not in visible)
        assert await seen(actor, col(Message.id) == hidden.id) == set()

    await check(agent, mine | nobodys)
    await check(other_agent, theirs | nobodys)

    moved, erased = next(iter(mine)), next(iter(nobodys))
    async with db.session(org.id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == moved)
            .values(assignee_membership_id=other_agent.membership.id)
        )
        await session.exec(
            update(Conversation).where(col(Conversation.id) == erased).values(erased_at=utcnow())
        )
    await check(agent, mine - {moved} | nobodys - {erased})
    await check(other_agent, theirs | {moved} | nobodys - {erased})
