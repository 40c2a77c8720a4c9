"""The Core tables and statement helpers that inbound messages and statuses share."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, case
from sqlalchemy import update as update_of
from sqlalchemy.ext.asyncio import AsyncConnection

from weflux.auth.scoping import core_scope
from weflux.models import Contact, Conversation, ConversationStatus, MediaFile, Message
from weflux.sql_lists import array_lists, fixed_lists

_CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[attr-defined]
_MESSAGES: Table = Message.__table__  # type: ignore[attr-defined]
_MEDIA_FILES: Table = MediaFile.__table__  # type: ignore[attr-defined]

# A conversation's status once a customer's message comes: a resolved one reopens.
REOPENED_STATUS = case(
    (_CONVERSATIONS.c.status == ConversationStatus.RESOLVED, ConversationStatus.OPEN),
    else_=_CONVERSATIONS.c.status,
)


def _feed_update(table: Table, key: str, values: dict[str, Any]) -> dict[bool, Any]:
    """UPDATE of one row by id (parameter `key`), confined by `core_scope`; keyed by
    whether the engine is SQLite, where the row also takes its feed position (parameter
    `position`: `reserve_feed_positions`); PostgreSQL's trigger sets it there."""
    return {
        sqlite: update_of(table)
        .where(table.c.id == bindparam(key), core_scope(table))
        .values({**values, "update_seq": bindparam("position")} if sqlite else values)
        for sqlite in (True, False)
    }


def _lookup_sync(
    connection: Connection,
    org_id: uuid.UUID,
    plain: Any,
    with_feed: Any,
    params: dict[str, Any],
) -> tuple[Sequence[Any], int | None]:
    """The rows of a lookup with its IN lists bound as arrays on PostgreSQL (one statement
    for any number of ids: `array_lists`), fixed lists on SQLite with the workspace's
    highest feed position (`with_feed`: the same lookup with `with_feed_highest`, whose
    first row carries it; PostgreSQL numbers positions in a trigger). Synchronous: for a
    caller already in SQLAlchemy's greenlet (`AsyncSession.run_sync`); else `_lookup`."""
    if connection.dialect.name == "postgresql":
        return connection.execute(*array_lists(plain, params)).all(), None
    statement, fixed = fixed_lists(with_feed, params | {"feed_org": org_id})
    rows = connection.execute(statement, fixed).all()
    return rows, int(rows[0].feed_highest)


async def _lookup(
    connection: AsyncConnection,
    org_id: uuid.UUID,
    plain: Any,
    with_feed: Any,
    params: dict[str, Any],
) -> tuple[Sequence[Any], int | None]:
    """`_lookup_sync` from async code (one greenlet, as one `execute` would take)."""
    return await connection.run_sync(_lookup_sync, org_id, plain, with_feed, params)
