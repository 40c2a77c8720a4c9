"""Refresh the quality rating and messaging limits of every connected number on an interval.

Several workers may run at once: on PostgreSQL each claims due accounts with
`FOR UPDATE SKIP LOCKED` (`crossings.due_health_checks`, across workspaces) and stamps
them, in each one's workspace, before calling Meta, so no two workers check the same
number in the same round. A number whose templates were not synced in the last 24
hours has them synced after its health refresh (`weflux.services.templates`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col

from weflux.auth import crossings
from weflux.auth.scoping import use_workspace
from weflux.db import Database
from weflux.errors import WefluxError
from weflux.models import WhatsAppAccount, utcnow
from weflux.services import channels, templates
from weflux.services.channels import Services

log = logging.getLogger(__name__)


async def refresh_due_accounts(
    db: Database, services: Services, *, interval: timedelta, batch_size: int = 20
) -> int:
    """Refresh up to `batch_size` accounts not checked within `interval`; how many were."""
    due_before = utcnow() - interval
    async with db.session() as session:
        claimed = await crossings.due_health_checks(
            session, due_before=due_before, batch=batch_size
        )
        now = utcnow()
        for org_id, ids in crossings.by_workspace(claimed).items():
            await use_workspace(session, org_id)
            await session.exec(
                update(WhatsAppAccount)
                .where(col(WhatsAppAccount.id).in_(ids))
                .values(health_checked_at=now)
            )
    refreshed = 0
    for due in claimed:
        async with db.session(due.org_id) as session:
            account = await session.get(WhatsAppAccount, due.id)
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
        await _sync_templates_if_due(db, services, due.org_id, due.id)
    return refreshed


async def _sync_templates_if_due(
    db: Database, services: Services, org_id: uuid.UUID, account_id: uuid.UUID
) -> None:
    """Re-read a number's templates once a day (or soon after an unknown one's webhook)."""
    async with db.session(org_id) as session:
        account = await session.get(WhatsAppAccount, account_id)
        if account is None or account.disconnected_at is not None:
            return
        synced = account.templates_synced_at
        if synced is not None and synced > utcnow() - templates.TEMPLATE_SYNC_EVERY:
            return
        try:
            await templates.sync(session, services, account)
        except WefluxError as error:
            log.warning(
                "template sync failed", extra={"account": str(account.id), "error": error.message}
            )
        except Exception:
            log.exception("template sync failed", extra={"account": str(account.id)})
