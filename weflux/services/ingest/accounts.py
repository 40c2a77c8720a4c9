"""Account webhooks: a number's quality and messaging limit, its business account's status."""

from __future__ import annotations

import uuid

from sqlmodel import col
from sqlmodel import select as sqlmodel_select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.models import AccountStatus, WhatsAppAccount
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.ingest.routing import _Share

_ACCOUNT_EVENTS = {
    "ACCOUNT_RESTRICTION": AccountStatus.RESTRICTED,
    "ACCOUNT_VIOLATION": AccountStatus.FLAGGED,
    "DISABLED_UPDATE": AccountStatus.BANNED,
    "ACCOUNT_DELETED": AccountStatus.BANNED,
    "ACCOUNT_OFFBOARDED": AccountStatus.BANNED,
    "ACCOUNT_RECONNECTED": AccountStatus.CONNECTED,
}


async def _account_changes(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, share: _Share
) -> None:
    if not share.quality and not share.account:
        return
    ids = {r.account_id for _, group in (*share.quality, *share.account) for r in group}
    loaded = {
        a.id: a
        for a in (
            await session.exec(
                sqlmodel_select(WhatsAppAccount).where(col(WhatsAppAccount.id).in_(ids))
            )
        ).all()
    }
    for quality, routes in share.quality:
        for account in (loaded[r.account_id] for r in routes if r.account_id in loaded):
            if quality.current_limit:
                account.messaging_limit_tier = quality.current_limit
            account.health_checked_at = None  # the colour is not in the webhook: re-read soon
            publish_after_commit(
                session, broker, org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
            )
    for update, routes in share.account:
        status = _ACCOUNT_EVENTS.get(update.event or "")
        if status is None:
            continue
        for account in (loaded[r.account_id] for r in routes if r.account_id in loaded):
            account.status = status
            detail = ", ".join(update.restriction_types) or update.violation_type
            account.status_detail = (
                (f"{update.event}: {detail}" if detail else update.event)[:500]
                if update.event
                else None
            )
            publish_after_commit(
                session, broker, org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
            )
