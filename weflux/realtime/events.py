"""Domain events on the broker: ids only, published after the commit that made them true.

Each workspace has one exact channel; subscribers load what an event names through
the same scoping layer as queries, so an event never carries data a listener may not see.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.db import after_commit
from weflux.realtime.broker import Broker

log = logging.getLogger(__name__)

WHATSAPP_ACCOUNT_UPDATED = "whatsAppAccountUpdated"


def workspace_channel(org_id: uuid.UUID) -> str:
    return f"weflux:org:{org_id}"


def publish_after_commit(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, event: str, **ids: Any
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
