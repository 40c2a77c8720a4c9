"""The queue of stored webhook events: failures recorded for retry, the worker's sweep, replay.

Every received webhook is stored before the 200 (`weflux.api.webhooks`) and processed by
`weflux.services.ingest.process_event`. Here an event that failed is marked for a retry
with exponential backoff; the worker's sweep picks up events that are due or were never
processed (a crash after the 200); `weflux webhooks replay` reprocesses stored events.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import col, select

from weflux.auth import crossings
from weflux.backoff import exponential_backoff
from weflux.config import Settings
from weflux.db import Database
from weflux.models import WebhookEvent, WebhookEventStatus, utcnow
from weflux.realtime.broker import Broker
from weflux.services.ingest import process_event

log = logging.getLogger(__name__)

RETRY_BACKOFF_BASE = 5.0  # seconds: a failed event is retried after 5 s to 10 s first
MAX_ATTEMPTS_BACKOFF = timedelta(hours=1)


async def _record_failure(db: Database, event_id: uuid.UUID, error: BaseException) -> None:
    async with db.session(webhook_event=event_id) as session:
        event = await session.get(WebhookEvent, event_id)
        if event is None:
            return
        event.attempts += 1
        event.status = WebhookEventStatus.FAILED
        event.last_error = f"{type(error).__name__}: {str(error)[:300]}"
        delay = exponential_backoff(
            event.attempts,
            base=RETRY_BACKOFF_BASE,
            cap=MAX_ATTEMPTS_BACKOFF.total_seconds(),
            floor=RETRY_BACKOFF_BASE,
        )
        event.next_attempt_at = utcnow() + timedelta(seconds=delay)


async def process_event_safely(
    db: Database, broker: Broker, settings: Settings, event_id: uuid.UUID
) -> None:
    """Process an event; a failure is recorded on it for the worker to retry."""
    try:
        await process_event(db, broker, settings, event_id)
    except Exception as error:
        log.exception("webhook processing failed", extra={"event": str(event_id)})
        try:
            await _record_failure(db, event_id, error)
        except Exception:
            log.exception("could not record the failure; the worker will retry the event")


async def retry_due_events(
    db: Database,
    broker: Broker,
    settings: Settings,
    *,
    batch_size: int = 50,
    settle: timedelta = timedelta(seconds=30),
) -> int:
    """The worker's sweep: events never processed (a crash after the 200) or failed and due."""
    now = utcnow()
    async with db.session() as session:
        due = await crossings.due_webhook_events(
            session, now=now, settled_before=now - settle, batch=batch_size
        )
    for event_id in due:
        await process_event_safely(db, broker, settings, event_id)
    return len(due)


async def replay(
    db: Database, broker: Broker, settings: Settings, events: Database, *, since: Any = None
) -> tuple[int, int]:
    """Reprocess stored events (all, or received since `since`): (processed, failed).

    `events` lists them: the schema owner's maintenance handle (only it sees every stored
    event); each is then processed through `db`, the app's handle, as any other.
    """
    processed = failed = 0
    last: tuple[Any, uuid.UUID] | None = None
    while True:
        async with events.session(all_workspaces="webhook replay: list stored events") as session:
            query = select(WebhookEvent.received_at, WebhookEvent.id).order_by(
                col(WebhookEvent.received_at), col(WebhookEvent.id)
            )
            if since is not None:
                query = query.where(col(WebhookEvent.received_at) >= since)
            if last is not None:
                query = query.where(
                    or_(
                        col(WebhookEvent.received_at) > last[0],
                        and_(
                            col(WebhookEvent.received_at) == last[0],
                            col(WebhookEvent.id) > last[1],
                        ),
                    )
                )
            batch = list((await session.exec(query.limit(200))).all())
        if not batch:
            return processed, failed
        for received_at, event_id in batch:
            try:
                await process_event(db, broker, settings, event_id, force=True)
                processed += 1
            except Exception as error:
                failed += 1
                log.exception("replay failed", extra={"event": str(event_id)})
                await _record_failure(db, event_id, error)
            last = (received_at, event_id)


def failed_events_summary(events: Iterable[WebhookEvent]) -> list[str]:
    return [
        f"{e.id}  {e.received_at:%Y-%m-%d %H:%M:%S}  attempts={e.attempts}  {e.last_error or ''}"
        for e in events
    ]
