"""How a live event is read on its way to the frame (`weflux.gql.live`, `event_memo`)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette

from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.live import socket_context
from weflux.auth.scoping import restrict_to_agent, see_erased
from weflux.db import Database
from weflux.gql.event_memo import SharedEvent
from weflux.gql.live import _message_and_conversation
from weflux.gql.loaders import Loaders
from weflux.models import Conversation, Message, Organization, utcnow


async def _message(db: Database, org: Organization, **conversation: Any) -> Message:
    async with db.session(org.id) as session:
        row = await create_conversation(session, **conversation)
        return await create_message(session, row, text="hello")


async def test_a_new_message_is_read_with_its_conversation(db: Database, org: Organization) -> None:
    message = await _message(db, org)
    async with db.session(org.id) as session:
        loaders = Loaders(lambda: session)
        found = await _message_and_conversation(session, Message, message.id, loaders)
        assert found is not None
        assert found.text == "hello"
        primed = loaders.conversation.cache_map.get(message.conversation_id)
        assert primed is not None
        assert primed.done()
        conversation = primed.result()
        assert conversation is not None
        assert conversation.id == message.conversation_id


async def test_an_agent_reads_nothing_of_a_conversation_assigned_to_someone_else(
    db: Database, org: Organization, admin: Actor, agent: Actor
) -> None:
    theirs = await _message(db, org, assignee_membership_id=admin.membership.id)
    open_to_all = await _message(db, org)
    async with db.session(org.id) as session:
        restrict_to_agent(session, agent.membership.id)
        loaders = Loaders(lambda: session)
        assert await _message_and_conversation(session, Message, theirs.id, loaders) is None
        assert loaders.conversation.cache_map.get(theirs.conversation_id) is None
        visible = await _message_and_conversation(session, Message, open_to_all.id, loaders)
        assert visible is not None
        assert visible.id == open_to_all.id


async def test_another_workspace_reads_nothing(
    db: Database, org: Organization, other_org: Organization
) -> None:
    message = await _message(db, org)
    async with db.session(other_org.id) as session:
        loaders = Loaders(lambda: session)
        assert await _message_and_conversation(session, Message, message.id, loaders) is None


async def test_a_workspace_wide_read_builds_the_rows_the_orm_loads(
    db: Database, org: Organization
) -> None:
    """Without an Agent's restriction the read is a Core statement: its rows hold every
    column as the ORM's own load does, values and types."""
    message = await _message(db, org, assignee_membership_id=None)
    async with db.session(org.id) as session:
        loaders = Loaders(lambda: session)
        found = await _message_and_conversation(session, Message, message.id, loaders)
        primed = loaders.conversation.cache_map.get(message.conversation_id)
    async with db.session(org.id) as session:
        stored = await session.get(Message, message.id)
        stored_conversation = await session.get(Conversation, message.conversation_id)
    assert found is not None
    assert primed is not None
    conversation = primed.result()
    assert stored is not None
    assert stored_conversation is not None
    for built, loaded in ((found, stored), (conversation, stored_conversation)):
        for column in type(loaded).__table__.columns:  # type: ignore[union-attr]
            value, expected = getattr(built, column.key), getattr(loaded, column.key)
            assert value == expected, column.key
            assert type(value) is type(expected), column.key


@pytest.mark.parametrize("reader", ["workspace", "agent"])
async def test_a_message_of_an_erased_conversation_is_not_read(
    db: Database, org: Organization, agent: Actor, reader: str
) -> None:
    message = await _message(db, org)
    async with db.session(org.id) as session:
        see_erased(session)
        conversation = await session.get(Conversation, message.conversation_id)
        assert conversation is not None
        conversation.erased_at = utcnow()
        session.add(conversation)
    async with db.session(org.id) as session:
        if reader == "agent":
            restrict_to_agent(session, agent.membership.id)
        loaders = Loaders(lambda: session)
        assert await _message_and_conversation(session, Message, message.id, loaders) is None
        assert loaders.conversation.cache_map.get(message.conversation_id) is None


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_on_sqlite_a_live_events_unit_holds_no_write_lock(
    app: Starlette, org: Organization, admin: Actor
) -> None:
    """Given a live event's unit that has read the event (messageAdded's leader read),
    when a writer begins before the unit ends,
    then SQLite gives it the write lock at once: the unit began as a reader (deferred),
    so fan-out reads never queue behind webhooks, nor webhooks behind them."""
    context = socket_context(app, admin)
    db = context.db
    message = await _message(db, org)
    assert db.url.database
    writer = sqlite3.connect(db.url.database, timeout=0, isolation_level=None)
    try:
        async with context.event_unit():
            unit = context.unit
            found = await _message_and_conversation(
                unit, Message, message.id, Loaders(lambda: unit)
            )
            assert found is not None
            assert unit.in_transaction()
            writer.execute("BEGIN IMMEDIATE")  # "database is locked" if the unit held it
            writer.execute("ROLLBACK")
    finally:
        writer.close()


class _Session:
    """Stands for a unit of work: counts the reads, fails or blocks them on demand."""

    def __init__(self) -> None:
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False


def _unit(session: _Session) -> Callable[[], AsyncSession]:
    return lambda: cast("AsyncSession", session)


async def _fetch(
    unit: AsyncSession, _model: type[Any], row_id: uuid.UUID, _loaders: Loaders
) -> str:
    session = cast("_Session", unit)
    session.reads += 1
    if session.gate is not None:
        await session.gate.wait()
    if session.fail:
        raise RuntimeError("database gone")
    return f"row {row_id}"


def _shared() -> SharedEvent:
    return SharedEvent(Loaders(lambda: AsyncSession()))


async def test_subscribers_of_a_class_share_one_read() -> None:
    shared, session, row_id = _shared(), _Session(), uuid.uuid4()
    session.gate = asyncio.Event()
    first = asyncio.create_task(shared.load(_unit(session), Message, row_id, _fetch))
    second = asyncio.create_task(shared.load(_unit(session), Message, row_id, _fetch))
    await asyncio.sleep(0)
    session.gate.set()
    assert await first == await second == f"row {row_id}"
    assert session.reads == 1
    assert await shared.load(_unit(session), Message, row_id, _fetch) == f"row {row_id}"
    assert session.reads == 1


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_when_the_first_read_ends_without_a_row_the_others_read_for_themselves(
    ending: str,
) -> None:
    shared, row_id = _shared(), uuid.uuid4()
    first_session, own = _Session(), _Session()
    first_session.gate = asyncio.Event()
    first_session.fail = ending == "failed"
    first = asyncio.create_task(shared.load(_unit(first_session), Message, row_id, _fetch))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(shared.load(_unit(own), Message, row_id, _fetch))
    await asyncio.sleep(0)
    if ending == "cancelled":
        first.cancel()
    else:
        first_session.gate.set()
    results = await asyncio.gather(first, waiting, return_exceptions=True)
    if ending == "cancelled":
        assert isinstance(results[0], asyncio.CancelledError)
    else:
        assert isinstance(results[0], RuntimeError)  # its own retry failed as well
    assert results[1] == f"row {row_id}"
    assert own.reads == 1
    # and a later subscriber reads again too (nothing failed is kept)
    later = _Session()
    assert await shared.load(_unit(later), Message, row_id, _fetch) == f"row {row_id}"
    assert later.reads == 1
