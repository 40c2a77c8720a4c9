"""A share's inbound rows, sent a statement per kind or (PostgreSQL) held back and folded."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, event, insert
from sqlalchemy import update as update_of
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import (
    ScopedSession,
    core_scope,
    core_scope_params,
    insert_checked,
    reserve_feed_positions_sync,
)
from weflux.models import ConversationStatus, WebhookEvent
from weflux.services import folding
from weflux.services.ingest import pg_single
from weflux.services.ingest.senders import _Sender, _Thread
from weflux.services.ingest.statements import (
    _CONTACTS,
    _CONVERSATIONS,
    _MEDIA_FILES,
    _MESSAGES,
    REOPENED_STATUS,
    _feed_update,
)
from weflux.sqlite_driver import inline

# Inbound messages are written with Core statements built once (their compiled forms are
# reused): no ORM instance, no unit of work (issue 11). Reads and updates are confined by
# `core_scope`, INSERTs run by `insert_checked` (each row's workspace checked, as the
# session's scoping hook checks an INSERT through the session); all on its connection.
# On SQLite the conversations and messages take their feed positions as a flush would
# (`reserve_feed_positions_sync`), on PostgreSQL the trigger sets them. Nothing listens
# to ORM events of these models (`grep -rn listens_for weflux/`: the feed hooks of
# weflux.auth.scoping, replaced here, and the channel cache, which hears only
# `whatsapp_accounts`).

# Inline on SQLite: the rows of one event (an executemany of more than INLINE_MAX_ROWS hops),
# each checked by primary and unique keys and foreign keys to one row.
_INSERT_CONTACTS = inline(insert(_CONTACTS))
_INSERT_CONVERSATIONS = inline(insert(_CONVERSATIONS))
_INSERT_MESSAGES = inline(insert(_MESSAGES))
_INSERT_MEDIA_FILES = inline(insert(_MEDIA_FILES))
# Inline on SQLite: one row by primary key per changed sender.
_UPDATE_CONTACTS = inline(
    update_of(_CONTACTS)
    .where(_CONTACTS.c.id == bindparam("contact"), core_scope(_CONTACTS))
    .values(
        {
            column: bindparam(column)
            for column in (
                "user_id",
                "wa_id",
                "username",
                "name",
                "profile_name",
                "phone_number",
                "opted_out",
                "opted_out_at",
                "updated_at",
            )
        }
    )
)


# A known conversation's new messages: counted unread, the latest shown, reopened.
_UPDATE_CONVERSATIONS = _feed_update(
    _CONVERSATIONS,
    "conversation",
    {
        "unread_count": _CONVERSATIONS.c.unread_count + bindparam("added"),
        "status": REOPENED_STATUS,
        "last_message_id": bindparam("last_message_id"),
        "last_message_at": bindparam("last_message_at"),
        "last_inbound_at": bindparam("last_inbound_at"),
        "updated_at": bindparam("updated_at"),
    },
)
# Inline on SQLite: one row by primary key per conversation (`core_scope` of conversations
# is two columns of that row).
_UPDATE_CONVERSATIONS = {sqlite: inline(u) for sqlite, u in _UPDATE_CONVERSATIONS.items()}


@dataclass(slots=True)
class _Rows:
    """One share's inbound writes as rows, built once (`_rows`) whatever the engine:
    SQLite sends them one statement per kind (`_send_separately`), PostgreSQL holds them
    back to fold them into one statement (`_hold`), but for many rows (past
    `folding.MAX_ROWS`) and a queue's batch (`inbound._BATCH_KEY`): sent as SQLite sends
    them, statements whose form does not depend on the number of rows."""

    new_contacts: list[dict[str, Any]]
    changed_contacts: list[dict[str, Any]]
    new_conversations: list[dict[str, Any]]
    known_conversations: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    media_files: list[dict[str, Any]]

    def count(self) -> int:
        return (
            len(self.new_contacts)
            + len(self.changed_contacts)
            + len(self.new_conversations)
            + len(self.known_conversations)
            + len(self.messages)
            + len(self.media_files)
        )


def _rows(
    org_id: uuid.UUID,
    senders: Iterable[_Sender],
    threads: Iterable[_Thread],
    messages: list[dict[str, Any]],
    media_files: list[dict[str, Any]],
    now: datetime,
) -> _Rows:
    """The senders', conversations' and messages' rows, in the order of the flush they
    replace (known conversations in id order)."""
    distinct = {sender.id: sender for sender in senders}.values()
    threads = list(threads)
    return _Rows(
        new_contacts=[
            {"id": c.id, "org_id": org_id, **c.row(), "name_set_by_team": False, "created_at": now}
            for c in distinct
            if c.new
        ],
        changed_contacts=[
            {"contact": c.id, **c.row()} for c in distinct if c.changed and not c.new
        ],
        new_conversations=[
            {
                "id": t.id,
                "org_id": org_id,
                "contact_id": t.contact_id,
                "account_id": t.account_id,
                "status": ConversationStatus.OPEN,
                "unread_count": t.added,
                "last_message_id": t.last_message_id,
                "last_message_at": t.last_message_at,
                "last_inbound_at": t.last_inbound_at,
                "created_at": now,
                "updated_at": now,
            }
            for t in threads
            if t.new
        ],
        known_conversations=[
            {
                "conversation": t.id,
                "added": t.added,
                "last_message_id": t.last_message_id,
                "last_message_at": t.last_message_at,
                "last_inbound_at": t.last_inbound_at,
                "updated_at": now,
            }
            for t in sorted((t for t in threads if not t.new and t.added), key=lambda t: t.id)
        ],
        messages=messages,
        media_files=media_files,
    )


def _send_separately(
    session: Session,
    connection: Connection,
    org_id: uuid.UUID,
    rows: _Rows,
    highest: int | None,
) -> None:
    """A statement per kind of change, whatever the number of rows; on SQLite each row of
    the feed with the position the flush would have given it (PostgreSQL's trigger sets
    them). Every statement on the session's connection: INSERTs with each row's
    workspace checked (`insert_checked`), UPDATEs confined by `core_scope`. Synchronous,
    in SQLAlchemy's greenlet (`AsyncSession.run_sync`): one greenlet for every statement,
    not one each."""
    scope = core_scope_params(session)
    if rows.new_contacts:
        insert_checked(session, connection, _INSERT_CONTACTS, rows.new_contacts)
    if rows.changed_contacts:
        connection.execute(_UPDATE_CONTACTS, [row | scope for row in rows.changed_contacts])
    sqlite = connection.dialect.name != "postgresql"
    feed = (rows.new_conversations, rows.known_conversations, rows.messages)
    positions = iter(reserve_feed_positions_sync(connection, org_id, sum(map(len, feed)), highest))
    if rows.new_conversations:
        if sqlite:
            for row in rows.new_conversations:
                row["update_seq"] = next(positions)
        insert_checked(session, connection, _INSERT_CONVERSATIONS, rows.new_conversations)
    if rows.known_conversations:
        updates = [row | scope for row in rows.known_conversations]
        if sqlite:
            for row in updates:
                row["position"] = next(positions)
        connection.execute(_UPDATE_CONVERSATIONS[sqlite], updates)
    if rows.messages:
        if sqlite:
            for row in rows.messages:
                row["update_seq"] = row["created_seq"] = next(positions)
        insert_checked(session, connection, _INSERT_MESSAGES, rows.messages)
    if rows.media_files:
        insert_checked(session, connection, _INSERT_MEDIA_FILES, rows.media_files)


# session.info (SQLite): the event's own row when it is stored in the same transaction
# (`store_and_process`), given before the share is written, so that the greenlet that
# writes the share's rows writes it too (`send_event_row`); what no share took is written
# after them. A commit with it still held is refused, as for PostgreSQL's held writes.
_EVENT_ROW_KEY = "weflux.ingest.event_row"
_WEBHOOK_EVENTS: Table = WebhookEvent.__table__  # type: ignore[attr-defined]
# One cached statement (its compiled form is reused): the event's row, already processed.
# Inline on SQLite: one row (its body at most the webhook's MAX_BODY_BYTES).
_INSERT_PROCESSED_EVENT = inline(insert(_WEBHOOK_EVENTS))


def hold_event_row(session: AsyncSession, row: dict[str, Any]) -> None:
    """SQLite: hold the event's row, for the greenlet that writes the share's rows."""
    session.sync_session.info[_EVENT_ROW_KEY] = row


def event_row_held(session: AsyncSession) -> bool:
    return session.sync_session.info.get(_EVENT_ROW_KEY) is not None


def send_event_row(session: Session) -> None:
    """Write the event's row held by `hold_event_row`, if any (in SQLAlchemy's greenlet)."""
    row = session.info.pop(_EVENT_ROW_KEY, None)
    if row is not None:
        session.connection().execute(_INSERT_PROCESSED_EVENT, row)


# session.info (PostgreSQL): the writes held back to be sent as one statement
# (weflux.services.folding), with the event's own row when it is stored in the same
# transaction (`store_and_process`). Whatever runs a statement of its own after them
# sends them first (`_send_held`); a commit with writes still held is refused.
_HELD_KEY = "weflux.ingest.held"


def _hold(session: AsyncSession, rows: _Rows) -> None:
    """PostgreSQL: hold `rows` back, to fold them with what follows into one statement.

    The feed trigger numbers the parts in the order PostgreSQL runs them: conversations
    before their messages, as the flush did."""
    writes: folding.Writes = session.sync_session.info.setdefault(_HELD_KEY, folding.Writes())
    writes.add(folding.Insert(_CONTACTS, rows.new_contacts))
    writes.add(folding.Update(_UPDATE_CONTACTS, rows.changed_contacts))
    writes.add(folding.Insert(_CONVERSATIONS, rows.new_conversations))
    writes.add(folding.Update(_UPDATE_CONVERSATIONS[False], rows.known_conversations))
    writes.add(folding.Insert(_MESSAGES, rows.messages))
    writes.add(folding.Insert(_MEDIA_FILES, rows.media_files))


async def _send_held(session: AsyncSession, first: folding.Insert | None = None) -> bool:
    """Send the writes held back (after `first`, an INSERT, in the same statement) as one
    statement; whether there were any (else nothing is sent, not even `first`). One
    message held by `pg_single` goes as its own statement, `first` folded into it."""
    if await pg_single.send(session, first):
        return True
    writes: folding.Writes | None = session.sync_session.info.pop(_HELD_KEY, None)
    if writes is None or not writes.parts:
        return False
    await folding.send(session, writes, core_scope_params(session), first)
    return True


@event.listens_for(ScopedSession, "before_commit")
def _nothing_held(session: Any) -> None:
    writes = session.info.get(_HELD_KEY)
    if (
        (writes is not None and writes.parts)
        or pg_single.held(session)
        or session.info.get(_EVENT_ROW_KEY) is not None
    ):
        raise RuntimeError("ingest: a commit with writes still held back (call _send_held)")
