"""Refresh the quality rating and messaging limits of every connected number on an interval.

Several workers may run at once: on PostgreSQL each claims due accounts with
`FOR UPDATE SKIP LOCKED` and stamps them before calling Meta, so no two workers
check the same number in the same round.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import col, or_, select

from weflux.db import Database
from weflux.errors import WefluxError
from weflux.models import WhatsAppAccount, utcnow
from weflux.services import channels
from weflux.services.channels import Services

log = logging.getLogger(__name__)


async def refresh_due_accounts(
    db: Database, services: Services, *, interval: timedelta, batch_size: int = 20
) -> int:
    """Refresh up to `batch_size` accounts not checked within `interval`; how many were."""
    due_before = utcnow() - interval
    async with db.session(all_workspaces="health refresh: claim due accounts") as session:
        claimed = list(
            (
                await session.exec(
                    select(WhatsAppAccount)
                    .where(
                        col(WhatsAppAccount.disconnected_at).is_(None),
                        col(WhatsAppAccount.access_token_enc).is_not(None),
                        or_(
                            col(WhatsAppAccount.health_checked_at).is_(None),
                            col(WhatsAppAccount.health_checked_at) < due_before,
                        ),
                    )
                    .order_by(col(WhatsAppAccount.health_checked_at).asc().nulls_first())
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        now = utcnow()
        for due in claimed:
            due.health_checked_at = now
    refreshed = 0
    for claimed_account in claimed:
        async with db.session(claimed_account.org_id) as session:
            account = await session.get(WhatsAppAccount, claimed_account.id)
            if account is None or account.disconnected_at is not None:
                continue
            try:
                await channels.refresh_health(session, services, account)
                refreshed += 1
            except WefluxError as error:
                log.warning(
                    "health refresh failed",
                    extra={"account": str(account.id), "error": error.message},
                )
            except Exception:
                log.exception("health refresh failed", extra={"account": str(account.id)})
    return refreshed
