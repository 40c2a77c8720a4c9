"""A status webhook's statements, and what hides erased conversations' messages, are
bounded: their plans find rows by key, never by reading the workspace's messages or
conversations (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL with statistics).

Their SQLite marks (`inline`, weflux.sqlite_driver) rely on this."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Table
from sqlmodel import col, select

from tests.fixtures.plans import big_workspace, explained, prefer_indexes, workspace_reads
from weflux.auth.scoping import core_scope, core_scope_params
from weflux.db import Database
from weflux.models import Conversation, Message, Organization
from weflux.services.ingest import statuses

_FEED = "CO-ROUTINE feed"  # the workspace's highest feed position (SQLite): its own plan


def _lookup(sqlite: bool, by_id: bool) -> Any:
    return statuses._OUTBOUND_AND_FEED[by_id] if sqlite else statuses._OUTBOUND[by_id]


async def test_the_status_lookup_and_update_find_messages_by_key(
    db: Database, owner_db: Database, org: Organization
) -> None:
    """Given a workspace of 960 outbound messages in 120 conversations, 3 erased,
    when a status webhook looks its messages up (by wamid; by wamid or callback id) and
    updates one,
    then no step reads the workspace's messages or conversations: the unique wamid, the
    primary key, and the erased conversations' partial index."""
    messages = await big_workspace(db, owner_db, org.id)
    async with db.session(org.id) as session:
        connection = await session.connection()
        await prefer_indexes(connection)
        scope = core_scope_params(session)
        sqlite = connection.dialect.name == "sqlite"
        feed = {"feed_org": org.id} if sqlite else {}
        row = {
            "message": messages[-1].id,
            "status": "DELIVERED",
            "status_updated_at": None,
            "wa_message_id": messages[-1].wa_message_id,
            "error_code": None,
            "error_title": None,
        } | ({"position": 1} if sqlite else {})
        with explained(db) as plans:
            for by_id in (False, True):
                ids = [messages[0].id] if by_id else []
                params = {"wamids": [messages[-1].wa_message_id], "ids": ids}
                await connection.execute(_lookup(sqlite, by_id), params | scope | feed)
            await connection.execute(statuses._UPDATE_STATUSES[sqlite], row | scope)
    assert len(plans) == 3
    for plan in plans:
        assert workspace_reads(plan, skip=_FEED) == [], "\n".join(plan)


async def test_erased_conversations_are_hidden_by_their_partial_index(
    db: Database, owner_db: Database, org: Organization
) -> None:
    """Given the same workspace,
    when a message is read by id through the ORM and through `core_scope`,
    then the tombstone condition reads only the erased conversations (by
    `ix_conversations_erased`), and the message by its primary key."""
    messages = await big_workspace(db, owner_db, org.id)
    messages_table: Table = Message.__table__  # type: ignore[attr-defined]
    async with db.session(org.id) as session:
        connection = await session.connection()
        await prefer_indexes(connection)
        scope = core_scope_params(session)
        with explained(db) as plans:
            await session.exec(select(Message).where(col(Message.id) == messages[0].id))
            await connection.execute(
                messages_table.select().where(
                    messages_table.c.id == messages[0].id, core_scope(messages_table)
                ),
                scope,
            )
    assert len(plans) == 2
    for plan in plans:
        assert workspace_reads(plan) == [], "\n".join(plan)
        assert any("ix_conversations_erased" in line for line in plan), "\n".join(plan)


async def test_a_status_never_moves_an_erased_conversations_message(
    db: Database, owner_db: Database, org: Organization
) -> None:
    """Given a workspace with erased conversations,
    when the status lookup names a message of an erased conversation (by wamid, then by
    callback id) beside a visible one,
    then only the visible one is found."""
    messages = await big_workspace(db, owner_db, org.id, conversations=6, messages_each=2)
    async with db.session(org.id) as session:
        shown = set((await session.exec(select(Conversation.id))).all())  # not erased
    hidden = next(m for m in messages if m.conversation_id not in shown)
    visible = messages[-1]
    async with db.session(org.id) as session:
        connection = await session.connection()
        sqlite = connection.dialect.name == "sqlite"
        feed = {"feed_org": org.id} if sqlite else {}
        scope = core_scope_params(session)
        for by_id, params in (
            (False, {"wamids": [hidden.wa_message_id, visible.wa_message_id], "ids": []}),
            (True, {"wamids": [visible.wa_message_id], "ids": [hidden.id, uuid.uuid4()]}),
        ):
            result = await connection.execute(_lookup(sqlite, by_id), params | scope | feed)
            found = [row.id for row in result if row.id is not None]
            assert found == [visible.id]
