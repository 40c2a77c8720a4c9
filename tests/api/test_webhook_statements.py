"""The one-message webhook's SQL statements, pinned (issue 11: at most 6 for a new sender).

Counted with SQLAlchemy's `before_cursor_execute` on the app's engine, from the POST to
the end of its processing; transaction control (BEGIN, COMMIT) is not a statement.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import aiosqlite
import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import engine as async_engine
from sqlalchemy.ext.asyncio import session as async_session
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import select
from sqlmodel.ext.asyncio import session as sqlmodel_async_session

from tests.fixtures import webhooks as wh
from tests.fixtures.app import counting
from tests.fixtures.inbound import outbound_message
from tests.fixtures.live import signed_webhook
from tests.fixtures.round_trips import round_trips
from weflux import sqlite_driver
from weflux.auth.scoping import ScopedSession
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Conversation,
    Message,
    MessageStatus,
    WhatsAppAccount,
)
from weflux.runtime import runtime_of


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """The app's settings: the platform's webhooks signed as `signed_webhook` signs them."""
    return live_settings


def _is_statement(sql: str) -> bool:
    return sql.strip().split(None, 1)[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}


async def _statements(client: httpx.AsyncClient, app: Any, sender: str) -> list[str]:
    change = wh.messages_change(
        messages=[wh.text_message(from_wa_id=sender, body="hi")],
        contacts=[wh.contact(wa_id=sender, name="Customer")],
    )
    with counting(app) as statements:
        await signed_webhook(client, wh.webhook_body(change))
    seen = [statement for statement in statements if _is_statement(statement)]
    if os.environ.get("SHOW_STATEMENTS"):
        print("\n---", sender, len(seen), "\n" + "\n".join(s[:160] for s in seen))
    return seen


async def test_a_one_message_webhook_runs_few_statements(
    client: httpx.AsyncClient, app: Any, channel: WhatsAppAccount, dialect: str
) -> None:
    """Given a connected number,
    when a one-message webhook comes from a new sender, then another from that sender,
    then on SQLite the first runs 5 statements and the second one fewer; on PostgreSQL
    each runs 1: one statement that finds the sender and writes every row
    (weflux.services.ingest.pg_single), so a known sender saves no statement there, only
    the parts of that one; the scope's set_config goes with the BEGIN (weflux.pg_driver)."""
    await _statements(client, app, "16505550000")  # the number's routes, now cached
    new = await _statements(client, app, "16505550001")
    with round_trips() as trips:
        known = await _statements(client, app, "16505550001")
    # SQLite reads the change feed's highest position in the sender lookup (PostgreSQL
    # takes it in a trigger: docs/realtime.md).
    expected = {"sqlite": (5, 4), "postgresql": (1, 1)}[dialect]
    assert (len(new), len(known)) == expected
    if dialect == "postgresql":
        # The scope (the routes are cached: the workspace is known when the transaction
        # begins) and the feed lock (the webhook writes several feed rows: docs/realtime.md),
        # before any row lock, in the BEGIN's round trip; then the statement and COMMIT.
        begins = [trip for trip in trips if trip.startswith("query: BEGIN")]
        assert len(begins) == 1, trips
        assert "set_config('app.org_id'" in begins[0]
        assert "pg_advisory_xact_lock" in begins[0]
        # (A prepare is the statement cache's first sight of a shape: this one's, here.)
        executed = [trip for trip in trips if not trip.startswith("prepare: ")]
        assert len(executed) == 3, "\n".join(trip[:150] for trip in trips)
        # The same statement, new sender or known: it finds the sender (a SELECT), inserts
        # or updates the contact and the conversation, stores the event, and is the
        # message's INSERT.
        assert new[-1] == known[-1]
        assert known[-1].startswith("WITH"), known[-1]
        assert known[-1].count(" AS \n(SELECT") == 1, known[-1]
        assert known[-1].count(" AS \n(INSERT INTO") == 3, known[-1]
        assert known[-1].count(" AS \n(UPDATE") == 2, known[-1]
        assert "\n INSERT INTO messages" in known[-1], known[-1]


async def test_a_redelivered_message_is_still_a_no_op(
    client: httpx.AsyncClient, app: Any, channel: WhatsAppAccount, db: Database, dialect: str
) -> None:
    """Given a message stored already (its wamid is not asked for before the insert),
    when Meta delivers the same webhook again,
    then it is answered 200, the message is stored once and its conversation unchanged."""
    body = wh.webhook_body(
        wh.messages_change(
            messages=[wh.text_message(from_wa_id="16505550009", body="once")],
            contacts=[wh.contact(wa_id="16505550009")],
        )
    )
    for _ in range(2):
        await signed_webhook(client, body)  # each answered 200
    async with db.session(channel.org_id) as session:
        assert len((await session.exec(select(Message))).all()) == 1
        (conversation,) = (await session.exec(select(Conversation))).all()
    assert conversation.unread_count == 1


async def test_a_one_status_webhook_runs_few_statements(
    client: httpx.AsyncClient, app: Any, channel: WhatsAppAccount, db: Database, dialect: str
) -> None:
    """Given a sent outbound message (the number's routes cached),
    when Meta's delivered status for it comes,
    then the webhook runs 3 statements (on PostgreSQL the scope's set_config goes with the
    BEGIN) and the message is delivered."""
    await _statements(client, app, "16505550000")
    wamid = wh.new_wamid()
    message = await outbound_message(db, channel.org_id, wamid)
    change = wh.messages_change(statuses=[wh.status(wamid, "delivered")])
    with counting(app) as statements:
        await signed_webhook(client, wh.webhook_body(change))
    seen = [statement for statement in statements if _is_statement(statement)]
    if os.environ.get("SHOW_STATEMENTS"):
        print("\n--- status", len(seen), "\n" + "\n".join(s[:200] for s in seen))
    async with db.session(channel.org_id) as session:
        stored = await session.get(Message, message.id)
    assert stored is not None
    assert stored.status == MessageStatus.DELIVERED
    assert len(seen) == 3


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_on_sqlite_the_webhook_s_writes_take_one_greenlet_and_no_orm_execution(
    client: httpx.AsyncClient,
    app: Any,
    channel: WhatsAppAccount,
    dialect: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a connected number on SQLite,
    when one-message webhooks come from a new sender, then from that sender,
    then each unit enters SQLAlchemy's greenlet twice (its BEGIN, the share's lookup and
    writes and the event's row together; then its COMMIT: each call of the async API
    takes one), and no statement takes the ORM's execution (the INSERTs run on the
    connection, each row's workspace checked by `scoping.insert_checked`; issue 11)."""
    await _statements(client, app, "16505550000")  # the number's routes, now cached
    spawned: list[str] = []
    orm_executions: list[str] = []

    def counting_spawns(module: Any) -> None:
        spawn = module.greenlet_spawn

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            spawned.append(getattr(fn, "__name__", repr(fn)))
            return await spawn(fn, *args, **kwargs)

        monkeypatch.setattr(module, "greenlet_spawn", counted)

    for module in (async_engine, async_session, sqlmodel_async_session):
        counting_spawns(module)

    def orm_execution(state: ORMExecuteState) -> None:
        orm_executions.append(str(state.statement)[:40])

    event.listen(ScopedSession, "do_orm_execute", orm_execution)
    try:
        for sender in ("16505550001", "16505550001"):
            spawned.clear()
            await _statements(client, app, sender)
            assert len(spawned) == 2, spawned
            assert orm_executions == []
    finally:
        event.remove(ScopedSession, "do_orm_execute", orm_execution)


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_on_sqlite_the_webhook_s_statements_run_without_a_hand_off(
    client: httpx.AsyncClient,
    app: Any,
    channel: WhatsAppAccount,
    db: Database,
    dialect: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a connected number on SQLite,
    when one-message webhooks come from a new sender, then from that sender, then a status,
    then each unit's BEGIN IMMEDIATE (no other writer) and the bounded statements after
    it run on the event loop's thread, and its COMMIT alone takes a hand-off to
    aiosqlite's (weflux.sqlite_driver), the status lookup and UPDATE included (bounded:
    tests/services/test_status_plans.py)."""
    await _statements(client, app, "16505550000")
    wamid = wh.new_wamid()
    await outbound_message(db, channel.org_id, wamid)
    loop_thread = threading.get_ident()
    ran: list[tuple[str, bool]] = []
    run_statement = sqlite_driver._run_statement

    def recorded(driver: Any, operation: str, parameters: Any, many: bool) -> Any:
        words = operation.split(None, 3)
        kind = " ".join(words[:3] if words[0] == "INSERT" else words[:1])
        ran.append((kind, threading.get_ident() == loop_thread))
        return run_statement(driver, operation, parameters, many)

    hops: list[str] = []
    hand_off: Any = aiosqlite.Connection._execute  # untyped in aiosqlite

    async def counted(driver: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append("statement" if fn is recorded else fn.__name__)
        return await hand_off(driver, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver, "_run_statement", recorded)
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    await _statements(client, app, "16505550001")
    assert hops == ["commit"]
    assert ran == [
        ("SELECT", True),
        ("INSERT INTO contacts", True),
        ("INSERT INTO conversations", True),
        ("INSERT INTO messages", True),
        ("INSERT INTO webhook_events", True),
    ]
    ran.clear()
    hops.clear()
    await _statements(client, app, "16505550001")
    assert hops == ["commit"]
    assert ran == [
        ("SELECT", True),
        ("UPDATE", True),
        ("INSERT INTO messages", True),
        ("INSERT INTO webhook_events", True),
    ]
    ran.clear()
    hops.clear()
    change = wh.messages_change(statuses=[wh.status(wamid, "delivered")])
    await signed_webhook(client, wh.webhook_body(change))
    assert hops == ["commit"]
    assert ran == [
        ("SELECT", True),
        ("UPDATE", True),
        ("INSERT INTO webhook_events", True),
    ]


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_on_postgresql_the_webhook_s_statement_runs_past_sqlalchemy_s_execution(
    client: httpx.AsyncClient, app: Any, channel: WhatsAppAccount, db: Database, dialect: str
) -> None:
    """Given a connected number on PostgreSQL,
    when one-message webhooks come from a new sender, then from that sender,
    then their one statement takes neither the ORM's execution nor SQLAlchemy's (no
    execution event: `weflux.pg_driver.fetch_in_transaction` runs it on the session's
    connection, checked by `scoping.checked_folded`; issue 11), and is still the one
    statement the engine hears; the message, its contact and conversation are written."""
    await _statements(client, app, "16505550000")  # the number's routes, now cached
    executions: list[str] = []

    def orm_execution(state: ORMExecuteState) -> None:
        executions.append("orm: " + str(state.statement)[:40])

    def execution(_connection: Any, statement: Any, *_args: Any) -> None:
        executions.append("core: " + str(statement)[:40])

    engine = runtime_of(app).db.engine.sync_engine
    event.listen(ScopedSession, "do_orm_execute", orm_execution)
    event.listen(engine, "before_execute", execution)
    try:
        for sender in ("16505550001", "16505550001"):
            assert len(await _statements(client, app, sender)) == 1
            assert executions == []
    finally:
        event.remove(ScopedSession, "do_orm_execute", orm_execution)
        event.remove(engine, "before_execute", execution)
    async with db.session(channel.org_id) as session:
        (conversation,) = [
            c for c in (await session.exec(select(Conversation))).all() if c.unread_count == 2
        ]
        assert len((await session.exec(select(Message))).all()) == 3
    assert conversation.last_message_id is not None
