"""Assignment by role (CONTRACT §3): managers assign anyone; agents take and give up their own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, Api, codes, gid, workspace
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent, set_scope
from weflux.db import Database
from weflux.errors import NotFound
from weflux.models import Conversation, Organization, WhatsAppAccount
from weflux.realtime.broker import InProcessBroker
from weflux.services.conversations import assign


async def _conversation(
    db: Database, org: Organization, account: WhatsAppAccount, assignee: Actor | None = None
) -> Conversation:
    async with workspace(db, org.id) as session:
        return await create_conversation(
            session,
            account=account,
            assignee_membership_id=assignee.membership.id if assignee else None,
        )


async def _assign(
    api: Api, actor: Actor, conversation: Conversation, assignee: Actor | uuid.UUID | None
) -> dict[str, object]:
    if isinstance(assignee, Actor):
        assignee_id: str | None = gid("Member", assignee.membership.id)
    elif isinstance(assignee, uuid.UUID):
        assignee_id = gid("Member", assignee)
    else:
        assignee_id = None
    return await api(
        actor,
        ASSIGN,
        {
            "input": {
                "conversationId": gid("Conversation", conversation.id),
                "assigneeId": assignee_id,
            }
        },
    )


async def _stored_assignee(db: Database, conversation: Conversation) -> uuid.UUID | None:
    async with workspace(db, conversation.org_id) as session:
        row = await session.get(Conversation, conversation.id)
        assert row is not None
        return row.assignee_membership_id


async def test_an_agent_takes_an_unassigned_conversation_and_gives_it_up(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, agent: Actor
) -> None:
    conversation = await _conversation(db, org, account)

    taken = await _assign(api, agent, conversation, agent)
    assert taken["data"] == {
        "assignConversation": {
            "id": gid("Conversation", conversation.id),
            "assignee": {"id": gid("Member", agent.membership.id)},
        }
    }
    assert await _stored_assignee(db, conversation) == agent.membership.id
    # taking it again changes nothing and is no error
    assert "errors" not in await _assign(api, agent, conversation, agent)

    released = await _assign(api, agent, conversation, None)
    assert released["data"]["assignConversation"]["assignee"] is None  # type: ignore[index]
    assert await _stored_assignee(db, conversation) is None


async def test_an_agent_cannot_assign_to_anyone_else(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
    manager: Actor,
) -> None:
    unassigned = await _conversation(db, org, account)
    own = await _conversation(db, org, account, agent)
    for conversation in (unassigned, own):
        for assignee in (other_agent, manager):
            body = await _assign(api, agent, conversation, assignee)
            assert codes(body) == ["FORBIDDEN"]
    assert await _stored_assignee(db, unassigned) is None
    assert await _stored_assignee(db, own) == agent.membership.id


async def test_an_agent_cannot_take_or_release_someone_elses(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
) -> None:
    theirs = await _conversation(db, org, account, other_agent)
    assert codes(await _assign(api, agent, theirs, agent)) == ["NOT_FOUND"]
    assert codes(await _assign(api, agent, theirs, None)) == ["NOT_FOUND"]
    assert await _stored_assignee(db, theirs) == other_agent.membership.id


async def test_managers_and_admins_assign_to_anyone_and_unassign(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
) -> None:
    conversation = await _conversation(db, org, account, other_agent)
    for actor, assignee in (
        (manager, agent),
        (manager, manager),
        (admin, other_agent),
        (admin, admin),
        (manager, None),
    ):
        body = await _assign(api, actor, conversation, assignee)
        assert "errors" not in body, body
        expected = assignee.membership.id if assignee else None
        assert await _stored_assignee(db, conversation) == expected


async def test_assigning_to_another_workspaces_member_or_no_member_is_not_found(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    manager: Actor,
    other_admin: Actor,
    agent: Actor,
) -> None:
    conversation = await _conversation(db, org, account, agent)
    for assignee in (other_admin, uuid.uuid4()):
        assert codes(await _assign(api, manager, conversation, assignee)) == ["NOT_FOUND"]
    # an id of another type is no member either
    body = await api(
        manager,
        ASSIGN,
        {
            "input": {
                "conversationId": gid("Conversation", conversation.id),
                "assigneeId": gid("Conversation", conversation.id),
            }
        },
    )
    assert codes(body) == ["NOT_FOUND"]
    assert await _stored_assignee(db, conversation) == agent.membership.id


@asynccontextmanager
async def _agent_unit(db: Database, actor: Actor) -> AsyncIterator[AsyncSession]:
    """A unit of work as the GraphQL view opens one for an Agent (not committed here)."""
    async with db.sessionmaker() as session:
        set_scope(session, actor.org_id)
        restrict_to_agent(session, actor.membership.id)
        yield session


async def _waiting_for_the_lock(db: Database, dialect: str, asked: asyncio.Event) -> None:
    """Wait for the event that shows the second unit blocked on the first one's lock.

    PostgreSQL shows a backend waiting for a row lock; SQLite, one writer at a time, makes
    the second unit's `BEGIN IMMEDIATE` wait inside SQLite, where it cannot be watched: the
    event there is that unit asking for the write lock.
    """
    async with asyncio.timeout(10):
        await asked.wait()
        if dialect != "postgresql":
            return
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        async with db.engine.connect() as watcher:
            while (await watcher.execute(waiting)).scalar_one() == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (the state of another connection)


async def test_two_agents_grabbing_one_conversation_at_once_get_it_once(
    db: Database,
    dialect: str,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
) -> None:
    # given an unassigned conversation both agents see
    conversation = await _conversation(db, org, account)
    broker = InProcessBroker()
    asked = asyncio.Event()

    def asking_for_the_lock(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The workspace's feed lock (PostgreSQL) comes before the row lock, and holds too.
        if statement.startswith("BEGIN IMMEDIATE") or "pg_advisory_xact_lock" in statement:
            asked.set()

    async with _agent_unit(db, agent) as first, _agent_unit(db, other_agent) as second:
        # when the first takes it and, before that commits, the second tries too
        await assign(
            first, principal_of(agent), conversation.id, agent.membership.id, broker=broker
        )
        event.listen(db.engine.sync_engine, "before_cursor_execute", asking_for_the_lock)
        grab = asyncio.create_task(
            assign(
                second,
                principal_of(other_agent),
                conversation.id,
                other_agent.membership.id,
                broker=broker,
            )
        )
        await _waiting_for_the_lock(db, dialect, asked)
        assert not grab.done()  # waiting on the first one's lock
        event.remove(db.engine.sync_engine, "before_cursor_execute", asking_for_the_lock)
        await first.commit()

        # then the second finds it someone else's: NOT_FOUND
        with pytest.raises(NotFound):
            await grab
    assert await _stored_assignee(db, conversation) == agent.membership.id
