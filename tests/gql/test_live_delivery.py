"""How a live event is read on its way to the frame (`weflux.gql.live`, `event_memo`)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from sqlalchemy import bindparam, func, text
from sqlalchemy import select as core_select
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette

from tests.fixtures.app import counting
from tests.fixtures.databases import cancelled_while_waiting
from tests.fixtures.factories import (
    Actor,
    create_conversation,
    create_message,
    create_whatsapp_account,
)
from tests.fixtures.live import socket_context
from tests.fixtures.round_trips import round_trips
from weflux.auth.scoping import ScopedRead, see_erased
from weflux.db import Database
from weflux.gql.context import Context
from weflux.gql.event_memo import SharedEvent
from weflux.gql.live import _message_and_conversation, _row_by_id
from weflux.gql.loaders import Loaders
from weflux.models import (
    Conversation,
    Message,
    Note,
    Organization,
    SecurityEvent,
    WhatsAppAccount,
    utcnow,
)


async def _message(db: Database, org: Organization, **conversation: Any) -> Message:
    async with db.session(org.id) as session:
        row = await create_conversation(session, **conversation)
        return await create_message(session, row, text="hello")


async def _read(context: Context, message_id: uuid.UUID) -> tuple[Message | None, Loaders]:
    """messageAdded's read of a message, in a live event's unit of `context`'s caller."""
    loaders = context.new_loaders()
    async with context.event_unit(loaders):
        found = await _message_and_conversation(context.event_reader, Message, message_id, loaders)
    return found, loaders


async def _follow_read(context: Context, model: type[Any], row_id: uuid.UUID) -> Any:
    """An id-only subscription's read of a row (`_follow`), as `context`'s caller."""
    loaders = context.new_loaders()
    async with context.event_unit(loaders):
        return await _row_by_id(context.event_reader, model, row_id, loaders)


async def test_a_new_message_is_read_with_its_conversation(
    app: Starlette, org: Organization, admin: Actor
) -> None:
    context = socket_context(app, admin)
    message = await _message(context.db, org)
    found, loaders = await _read(context, message.id)
    assert found is not None
    assert found.text == "hello"
    primed = loaders.conversation.cache_map.get(message.conversation_id)
    assert primed is not None
    assert primed.done()
    conversation = primed.result()
    assert conversation is not None
    assert conversation.id == message.conversation_id


async def test_an_agent_reads_only_what_they_may_see(
    app: Starlette, org: Organization, admin: Actor, agent: Actor
) -> None:
    """Given messages in a conversation assigned to someone else, in one assigned to the
    Agent and in an unassigned one, when the Agent's live events read them, then only the
    last two are read (and nothing is primed for the first); an Admin reads all three."""
    db = socket_context(app, agent).db
    theirs = await _message(db, org, assignee_membership_id=admin.membership.id)
    mine = await _message(db, org, assignee_membership_id=agent.membership.id)
    open_to_all = await _message(db, org)
    as_agent = socket_context(app, agent)
    found, loaders = await _read(as_agent, theirs.id)
    assert found is None
    assert loaders.conversation.cache_map.get(theirs.conversation_id) is None
    for visible in (mine, open_to_all):
        found, _loaders = await _read(as_agent, visible.id)
        assert found is not None
        assert found.id == visible.id
    as_admin = socket_context(app, admin)
    for message in (theirs, mine, open_to_all):
        assert (await _read(as_admin, message.id))[0] is not None


async def test_an_agent_follows_no_note_of_a_conversation_they_cannot_see(
    app: Starlette, org: Organization, admin: Actor, agent: Actor
) -> None:
    """Given notes on a conversation assigned to someone else and on an unassigned one,
    when the Agent's `noteAdded` reads them, then only the second is read."""
    db = socket_context(app, agent).db
    async with db.session(org.id) as session:
        theirs = await create_conversation(session, assignee_membership_id=admin.membership.id)
        open_to_all = await create_conversation(session)
        hidden = Note(conversation_id=theirs.id, text="theirs")
        shown = Note(conversation_id=open_to_all.id, text="ours")
        session.add_all([hidden, shown])
    as_agent = socket_context(app, agent)
    assert await _follow_read(as_agent, Note, hidden.id) is None
    note = await _follow_read(as_agent, Note, shown.id)
    assert note is not None
    assert note.text == "ours"
    assert await _follow_read(socket_context(app, admin), Note, hidden.id) is not None


async def test_another_workspace_reads_nothing(
    app: Starlette, org: Organization, admin: Actor, other_org_agent: Actor
) -> None:
    """Given a message, a note and a number of one workspace, when live events of another
    workspace's member name them, then nothing is read."""
    db = socket_context(app, admin).db
    message = await _message(db, org)
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
        note = Note(conversation_id=message.conversation_id, text="private")
        session.add(note)
    stranger = socket_context(app, other_org_agent)
    assert (await _read(stranger, message.id))[0] is None
    assert await _follow_read(stranger, Note, note.id) is None
    assert await _follow_read(stranger, WhatsAppAccount, account.id) is None
    assert await _follow_read(socket_context(app, admin), WhatsAppAccount, account.id) is not None


def _same_rows(built: Any, loaded: Any) -> None:
    for column in type(loaded).__table__.columns:
        value, expected = getattr(built, column.key), getattr(loaded, column.key)
        assert value == expected, column.key
        assert type(value) is type(expected), column.key


async def test_a_live_read_builds_the_rows_the_orm_loads(
    app: Starlette, org: Organization, admin: Actor
) -> None:
    """The read is a Core statement run without a Session: its rows hold every column as
    the ORM's own load does, values and types (enums, JSON, times, sealed secrets)."""
    context = socket_context(app, admin)
    message = await _message(context.db, org, assignee_membership_id=None)
    async with context.db.session(org.id) as session:
        account = await create_whatsapp_account(session)
        event = SecurityEvent(
            kind="login_burst", severity="high", summary="bursts", details={"tries": 3}
        )
        session.add(event)
    found, loaders = await _read(context, message.id)
    primed = loaders.conversation.cache_map.get(message.conversation_id)
    followed = [
        await _follow_read(context, WhatsAppAccount, account.id),
        await _follow_read(context, SecurityEvent, event.id),
    ]
    async with context.db.session(org.id) as session:
        stored = await session.get(Message, message.id)
        stored_conversation = await session.get(Conversation, message.conversation_id)
        stored_account = await session.get(WhatsAppAccount, account.id)
        stored_event = await session.get(SecurityEvent, event.id)
    assert primed is not None
    for built, loaded in (
        (found, stored),
        (primed.result(), stored_conversation),
        (followed[0], stored_account),
        (followed[1], stored_event),
    ):
        assert built is not None
        assert loaded is not None
        _same_rows(built, loaded)


@pytest.mark.parametrize("reader", ["workspace", "agent"])
async def test_a_message_of_an_erased_conversation_is_not_read(
    app: Starlette, org: Organization, admin: Actor, agent: Actor, reader: str
) -> None:
    db = socket_context(app, admin).db
    message = await _message(db, org)
    async with db.session(org.id) as session:
        see_erased(session)
        conversation = await session.get(Conversation, message.conversation_id)
        assert conversation is not None
        conversation.erased_at = utcnow()
        session.add(conversation)
    context = socket_context(app, agent if reader == "agent" else admin)
    found, loaders = await _read(context, message.id)
    assert found is None
    assert loaders.conversation.cache_map.get(message.conversation_id) is None


def _no_session(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> AsyncSession:
        raise AssertionError("a live event's own read opened a Session")

    monkeypatch.setattr(context.db, "reader_sessionmaker", refused)
    monkeypatch.setattr(context.db, "sessionmaker", refused)


@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_a_live_event_s_read_opens_no_session(
    app: Starlette,
    org: Organization,
    admin: Actor,
    agent: Actor,
    role: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a message and a note, when an Admin's or an Agent's live events read them
    (messageAdded, noteAdded), then no ORM Session is opened: one scoped Core read."""
    context = socket_context(app, admin if role == "admin" else agent)
    message = await _message(context.db, org)
    async with context.db.session(org.id) as session:
        note = Note(conversation_id=message.conversation_id, text="seen")
        session.add(note)
    _no_session(context, monkeypatch)
    assert (await _read(context, message.id))[0] is not None
    assert await _follow_read(context, Note, note.id) is not None


@pytest.mark.parametrize("dialect", ["postgresql"])
@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_on_postgresql_a_live_read_is_three_round_trips(
    app: Starlette, org: Organization, admin: Actor, agent: Actor, role: str
) -> None:
    """Given a warm pool, when a live event reads its message, then it costs three round
    trips: BEGIN with the caller's workspace, the prepared SELECT of message and
    conversation, and ROLLBACK once the unit ends (after the frame)."""
    context = socket_context(app, admin if role == "admin" else agent)
    message = await _message(context.db, org)
    for _ in range(2):
        with round_trips() as trips:
            found, _loaders = await _read(context, message.id)
    assert found is not None
    assert len(trips) == 3, trips
    begin, read, end = trips
    assert begin == (
        f"query: BEGIN; SELECT set_config('app.org_id', '{org.id}', true), "
        "set_config('app.webhook_event_id', '', true)"
    )
    assert read.startswith("execute: SELECT messages.")
    assert "JOIN conversations" in read
    assert ("visible_conversation" in read) == (role == "agent")
    assert end == "query: ROLLBACK;"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_on_sqlite_a_live_read_is_its_begin_and_one_select(
    app: Starlette, org: Organization, admin: Actor
) -> None:
    """Given SQLite, when a live event reads its message, then the engine sends a
    deferred BEGIN and one SELECT (the rollback ends the connection's transaction)."""
    context = socket_context(app, admin)
    message = await _message(context.db, org)
    with counting(app) as statements:
        found, _loaders = await _read(context, message.id)
    assert found is not None
    assert len(statements) == 2, statements
    assert statements[0] == "BEGIN"
    assert statements[1].startswith("SELECT messages.")


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
        loaders = context.new_loaders()
        async with context.event_unit(loaders):
            found = await _message_and_conversation(
                context.event_reader, Message, message.id, loaders
            )
            assert found is not None
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


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_live_read_cancelled_mid_statement_gives_its_connection_back_clean(
    app: Starlette, owner_db: Database, org: Organization, admin: Actor
) -> None:
    """Given a live event's read waiting in its SELECT, when the subscriber's task is
    cancelled (its socket closed mid-read), then the unit gives its connection back to the
    pool at once, in no transaction, with no scope."""
    context = socket_context(app, admin)
    lock = {"lock_class": 4243, "key": uuid.uuid4().int % 2**31}
    waiting = ScopedRead(
        lambda _scope_of: core_select(
            func.pg_advisory_xact_lock(bindparam("lock_class"), bindparam("key"))
        )
    )

    async def read() -> None:
        async with context.event_unit():
            await context.event_reader.fetch(waiting, lock)

    pool = context.db.engine.sync_engine.pool

    def checked_out() -> None:
        assert pool.checkedout() == 1  # type: ignore[attr-defined]

    await cancelled_while_waiting(owner_db, lock, read, checked_out)
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    async with context.db.engine.connect() as connection:
        seen = await connection.execute(text("SELECT current_setting('app.org_id', true)"))
        assert seen.scalar() == ""


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_live_read_that_failed_reads_again_in_a_new_transaction(
    app: Starlette, org: Organization, admin: Actor
) -> None:
    """Given a live event's unit whose read failed (a division by zero), when it reads
    again (as `SharedEvent.load` retries), then the read succeeds: the failed transaction
    ended at once, the second begins anew with the caller's scope."""
    context = socket_context(app, admin)
    message = await _message(context.db, org)
    failing = ScopedRead(lambda _scope_of: core_select(bindparam("one") / bindparam("zero")))
    loaders = context.new_loaders()
    async with context.event_unit(loaders):
        with pytest.raises(DBAPIError, match="division by zero"):
            await context.event_reader.fetch(failing, {"one": 1, "zero": 0})
        found = await _message_and_conversation(context.event_reader, Message, message.id, loaders)
    assert found is not None
