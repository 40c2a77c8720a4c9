"""Conversations leaving someone's view: kept in the change feed, announced live."""

from __future__ import annotations

import uuid

from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.models import ConversationRemoval, RemovalReason
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit


def record_removal(
    session: AsyncSession,
    broker: Broker | None,
    org_id: uuid.UUID,
    reason: RemovalReason,
    *,
    conversation_id: uuid.UUID | None = None,
    member_id: uuid.UUID | None = None,
) -> None:
    """Keep a removal at the feed's next position; signal `conversationRemoved` on commit.

    `member_id`: who lost the view (see ConversationRemoval); the event carries the same
    fields, but subscribers read the feed, not the event (docs/realtime.md).
    """
    session.add(
        ConversationRemoval(
            org_id=org_id,
            conversation_id=conversation_id,
            member_id=member_id,
            reason=reason.value,
        )
    )
    if broker is None:
        return
    fields: dict[str, object] = {"reason": reason.value}
    if conversation_id is not None:
        fields["id"] = conversation_id
    if reason == RemovalReason.ROLE_NARROWED:
        fields["member"] = member_id
    else:
        fields["previous"] = member_id or ""
    publish_after_commit(session, broker, org_id, EventName.CONVERSATION_REMOVED, **fields)
