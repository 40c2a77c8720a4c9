"""Status webhooks: outbound messages moved forward, matched by wamid or callback data."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import (
    core_scope,
    core_scope_params,
    reserve_feed_positions,
    with_feed_highest,
)
from weflux.models import Message, MessageDirection, MessageStatus, moves_forward
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services import reactions
from weflux.services.ingest.statements import _MESSAGES, _feed_update, _lookup
from weflux.sqlite_driver import inline
from weflux.whatsapp.parser import StatusUpdate

_STATUS = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "played": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}


def _callback_id(status: StatusUpdate) -> uuid.UUID | None:
    try:
        return uuid.UUID(status.biz_opaque_callback_data or "")
    except ValueError:
        return None


# Statuses move outbound messages forward with Core statements built once, as inbound
# messages are written: one select of the columns needed, one UPDATE (executemany) of the
# changed rows, both confined by `core_scope` on the session's connection. On SQLite the
# select carries the workspace's highest feed position and each changed message takes the
# next one as the flush did (in id order; `update_seq` only, `created_seq` is its
# insertion); on PostgreSQL the trigger sets it. The transaction holds the feed lock from
# `use_workspace` (SQLite: the write lock), so nobody changes these rows meanwhile.
#
# The lookup comes in two shapes, each built once: by wamid alone (the usual case: no
# status carries our callback data), and by wamid or id. One shape with an empty id list
# (`wa_message_id IN (…) OR id IN (<empty>)`) read every message of the workspace on
# SQLite: its planner cannot split an OR with an empty branch over two indexes
# (tests/services/test_status_plans.py).
_OUTBOUND_COLUMNS = (
    _MESSAGES.c.id,
    _MESSAGES.c.conversation_id,
    _MESSAGES.c.type,
    _MESSAGES.c.status,
    _MESSAGES.c.status_updated_at,
    _MESSAGES.c.wa_message_id,
    _MESSAGES.c.error_code,
    _MESSAGES.c.error_title,
)
_BY_WAMID = _MESSAGES.c.wa_message_id.in_(bindparam("wamids", expanding=True))
# Keyed by whether the statuses carry callback ids.
_OUTBOUND = {
    by_id: select(*_OUTBOUND_COLUMNS).where(
        core_scope(_MESSAGES),
        _MESSAGES.c.direction == MessageDirection.OUTBOUND,
        or_(_BY_WAMID, _MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
        if by_id
        else _BY_WAMID,
    )
    for by_id in (False, True)
}
# Inline on SQLite: the messages by the unique (org_id, wa_message_id) and the primary key
# (the `ids` branch: a multi-index OR), the erased conversations of `core_scope` by the
# covering partial `ix_conversations_erased` (few), the workspace's highest feed position
# by its covering indexes: bounded by the webhook's statuses (past INLINE_MAX_PARAMETERS,
# the hand-off).
_OUTBOUND_AND_FEED = {
    by_id: inline(with_feed_highest(statement)) for by_id, statement in _OUTBOUND.items()
}
_STATUS_COLUMNS = ("status", "status_updated_at", "wa_message_id", "error_code", "error_title")


# Inline on SQLite: one row by primary key per changed message (`core_scope`'s erased
# conversations by `ix_conversations_erased`, as above; more than INLINE_MAX_ROWS rows hop).
_UPDATE_STATUSES = {
    sqlite: inline(u)
    for sqlite, u in _feed_update(
        _MESSAGES, "message", {column: bindparam(column) for column in _STATUS_COLUMNS}
    ).items()
}


@dataclass(slots=True)
class _Outbound:
    """An outbound message as a status webhook reads and writes it."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    type: str
    status: MessageStatus
    status_updated_at: datetime | None
    wa_message_id: str | None
    error_code: int | None
    error_title: str | None

    def row(self) -> dict[str, Any]:
        return {"message": self.id, **{c: getattr(self, c) for c in _STATUS_COLUMNS}}


async def _outbound(
    connection: AsyncConnection,
    org_id: uuid.UUID,
    scope: dict[str, Any],
    statuses: Sequence[StatusUpdate],
) -> tuple[list[_Outbound], int | None]:
    """The outbound messages the statuses name (by wamid or callback data) and, on
    SQLite, the workspace's highest feed position."""
    params = {
        "wamids": list({s.wa_message_id for s in statuses}),
        "ids": list({cid for s in statuses if (cid := _callback_id(s)) is not None}),
        **scope,
    }
    by_id = bool(params["ids"])
    rows, highest = await _lookup(
        connection, org_id, _OUTBOUND[by_id], _OUTBOUND_AND_FEED[by_id], params
    )
    found = [
        _Outbound(
            id=row.id,
            conversation_id=row.conversation_id,
            type=row.type,
            status=row.status,
            status_updated_at=row.status_updated_at,
            wa_message_id=row.wa_message_id,
            error_code=row.error_code,
            error_title=row.error_title,
        )
        for row in rows
        if row.id is not None  # SQLite's one row of the feed position alone
    ]
    return found, highest


async def _apply_statuses(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, statuses: Sequence[StatusUpdate]
) -> None:
    """Move outbound messages forward (never back), matched by wamid or callback data."""
    connection = await session.connection()
    scope = core_scope_params(session)
    rows, highest = await _outbound(connection, org_id, scope, statuses)
    by_wamid = {m.wa_message_id: m for m in rows if m.wa_message_id}
    by_id = {m.id: m for m in rows}
    changed: dict[uuid.UUID, _Outbound] = {}
    for status in sorted(statuses, key=lambda s: s.timestamp):
        new = _STATUS.get(status.status)
        callback = _callback_id(status)
        message = by_wamid.get(status.wa_message_id) or (by_id.get(callback) if callback else None)
        if message is None or new is None:
            continue
        if message.wa_message_id is None:
            message.wa_message_id = status.wa_message_id  # the send response was lost
            by_wamid[status.wa_message_id] = message
            changed[message.id] = message
        if not moves_forward(message.status, new):
            continue
        message.status = new
        message.status_updated_at = status.timestamp
        if new == MessageStatus.FAILED and status.errors:
            error = status.errors[0]
            message.error_code = error.code
            message.error_title = (error.title or error.message or "")[:500] or None
        changed[message.id] = message
    if not changed:
        return
    # In id order, as the flush wrote (and, on SQLite, numbered) them.
    updates = [m.row() | scope for m in sorted(changed.values(), key=lambda m: m.id)]
    sqlite = connection.dialect.name != "postgresql"
    if sqlite:
        positions = await reserve_feed_positions(connection, org_id, len(updates), highest)
        for row, position in zip(updates, positions, strict=True):
            row["position"] = position
    await connection.execute(_UPDATE_STATUSES[sqlite], updates)
    for message in changed.values():
        publish_after_commit(
            session,
            broker,
            org_id,
            EventName.MESSAGE_UPDATED,
            id=message.id,
            conversation_id=message.conversation_id,
        )
        if message.type == "reaction" and message.status == MessageStatus.FAILED:
            # Rare: the ORM row, as the UPDATE left it.
            failed = await session.get(Message, message.id, populate_existing=True)
            if failed is not None:
                await reactions.undo_failed_reaction(session, broker, failed)
