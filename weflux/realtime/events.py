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
from weflux.realtime.broker import Broker

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


def publish_after_commit(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, event: EventName, **ids: Any
) -> None:
    """Queue `event` for the workspace's channel once `session` commits."""
    # `eid` names this occurrence: subscribers of one visibility class share its load.
    message = {
        "event": event,
        "eid": uuid.uuid4().hex,
        **{key: str(value) for key, value in ids.items()},
    }

    async def publish() -> None:
        try:
            await broker.publish(workspace_channel(org_id), message)
        except Exception:
            # The change is committed; listeners catch up from the database.
            log.warning("could not publish an event", extra={"event": event})

    after_commit(session, publish)
