"""Domain events on the broker: ids only, published after the commit that made them true.

Each workspace has one exact channel; subscribers load what an event names through
the same scoping layer as queries, so an event never carries data a listener may not see.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.db import after_commit
from weflux.realtime.broker import Broker, Message

log = logging.getLogger(__name__)


class EventName(StrEnum):
    """The `event` of a broker message: the wire names, shared by publishers and subscribers.

    Each published one is named after the subscription that delivers it.
    """

    MESSAGE_ADDED = "messageAdded"
    MESSAGE_UPDATED = "messageUpdated"
    CONVERSATION_UPDATED = "conversationUpdated"
    WHATSAPP_ACCOUNT_UPDATED = "whatsAppAccountUpdated"
    SECURITY_EVENT_ADDED = "securityEventAdded"
    NOTE_ADDED = "noteAdded"
    # Many conversations changed at once without an event of their own (a contact's
    # erasure, a removed member's conversations unassigned): counts must be read again.
    INBOX_COUNTS_UPDATED = "inboxCountsUpdated"
    # A conversation left some members' view: `id` and `previous` (its assignee before, ""
    # for none) when reassigned or erased; `member` when that member's role narrowed.
    CONVERSATION_REMOVED = "conversationRemoved"
    # Never published: the hub's marker to its listeners after a broker reconnection.
    RESYNC = "__resync__"


def workspace_channel(org_id: uuid.UUID) -> str:
    return f"weflux:org:{org_id}"


_QUEUED = "weflux.events_queued"


class _Batch:
    """The events one transaction queued: published together once it commits."""

    __slots__ = ("broker", "info", "messages", "transaction")

    def __init__(self, broker: Broker, info: dict[Any, Any], transaction: object) -> None:
        self.broker = broker
        self.info = info
        self.transaction = transaction
        self.messages: list[tuple[str, Message]] = []

    async def publish(self) -> None:
        if self.info.get(_QUEUED) is self:
            del self.info[_QUEUED]
        try:
            await self.broker.publish_many(self.messages)
        except Exception:
            # The change is committed; listeners catch up from the database.
            events = [message["event"] for _, message in self.messages]
            log.warning("could not publish events", extra={"events": events})


def publish_after_commit(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, event: EventName, **ids: Any
) -> None:
    """Queue `event` for the workspace's channel once `session` commits.

    The events one transaction queues go out together, in the order queued, in one round
    trip to the broker (`Broker.publish_many`) once it has committed (a unit of work that
    fails discards them: `weflux.db.settle`); a later transaction of the same session
    starts a batch of its own.
    """
    # `eid` names this occurrence: subscribers of one visibility class share its load.
    message = {
        "event": event,
        "eid": uuid.uuid4().hex,
        **{key: str(value) for key, value in ids.items()},
    }
    sync = session.sync_session
    transaction = sync.get_transaction()
    batch: _Batch | None = sync.info.get(_QUEUED)
    if (
        transaction is None
        or batch is None
        or batch.transaction is not transaction
        or batch.broker is not broker
    ):
        batch = _Batch(broker, sync.info, transaction)
        if transaction is not None:  # a later event of the same transaction joins it
            sync.info[_QUEUED] = batch
        after_commit(session, batch.publish)
    batch.messages.append((workspace_channel(org_id), message))
