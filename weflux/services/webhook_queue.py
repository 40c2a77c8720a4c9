"""The queue of stored webhook events: the intake's bounds, failures recorded for retry,
the worker's sweep, replay.

Every received webhook is stored before the 200 (`weflux.api.webhooks`). While the
process has room (`WebhookIntake`), it is stored and processed in one transaction
(`weflux.services.ingest.store_and_process`) before the answer; under load it is only
stored, and processed by a few queue workers from a bounded in-memory queue, so the
answers keep their share of the event loop and of the database pool. An event the full
queue cannot take, or that a killed process held, stays in `webhook_events` unprocessed:
the worker's sweep picks up events that are due or were never processed; an event that
failed is marked for a retry with exponential backoff; `weflux webhooks replay`
reprocesses stored events.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from weflux.services.channel_cache import ChannelCache
from weflux.services.ingest import ReceivedEvent, process_event, received_copy

log = logging.getLogger(__name__)

RETRY_BACKOFF_BASE = 5.0  # seconds: a failed event is retried after 5 s to 10 s first
MAX_ATTEMPTS_BACKOFF = timedelta(hours=1)


def mark_failed(event: WebhookEvent, error: BaseException) -> None:
    """Record a failed attempt on the event, due again after a backoff."""
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


async def store(db: Database, event: ReceivedEvent, failure: BaseException | None = None) -> None:
    """Write a received event durably as it came (failed, when processing it just failed)."""
    row = received_copy(event)
    if failure is not None:
        mark_failed(row, failure)
    async with db.session(webhook_event=row.id) as session:
        session.add(row)


async def _record_failure(db: Database, event_id: uuid.UUID, error: BaseException) -> None:
    async with db.session(webhook_event=event_id) as session:
        event = await session.get(WebhookEvent, event_id)
        if event is None:
            return
        mark_failed(event, error)


async def process_event_safely(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_id: uuid.UUID,
    cache: ChannelCache | None = None,
) -> None:
    """Process an event; a failure is recorded on it for the worker to retry."""
    try:
        await process_event(db, broker, settings, event_id, cache=cache)
    except Exception as error:
        log.exception("webhook processing failed", extra={"event": str(event_id)})
        try:
            await _record_failure(db, event_id, error)
        except Exception:
            log.exception("could not record the failure; the worker will retry the event")


class WebhookIntake:
    """How a process takes in verified webhooks without being overrun.

    At most `inline` events are stored and processed in the request, each in one
    transaction (`ingest.store_and_process`); beyond that an event is only stored, and
    queued for `workers` tasks in a queue of `queued` ids at most. An id the full queue
    refuses is not lost: its row stays unprocessed until the worker's sweep
    (`retry_due_events`) takes it, as it takes those a killed process left behind.
    """

    def __init__(
        self,
        db: Database,
        broker: Broker,
        settings: Settings,
        cache: ChannelCache | None = None,
        *,
        inline: int,
        queued: int = 1000,
        workers: int = 2,
    ) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings
        self.cache = cache
        self.inline_free = inline
        self.workers = workers
        self.queue: asyncio.Queue[uuid.UUID] = asyncio.Queue(maxsize=queued)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def for_pool(
        cls,
        db: Database,
        broker: Broker,
        settings: Settings,
        cache: ChannelCache | None,
        pool_size: int,
    ) -> WebhookIntake:
        """Half the pool at most processes in requests, two connections for the queue;
        the rest stays free for the answers' own writes and the API."""
        return cls(db, broker, settings, cache, inline=max(1, pool_size // 2))

    def claim_inline(self) -> bool:
        """Whether this request may process its event now (then `release_inline` after)."""
        if self.inline_free <= 0:
            return False
        self.inline_free -= 1
        return True

    def release_inline(self) -> None:
        self.inline_free += 1

    def offer(self, event_id: uuid.UUID) -> bool:
        """Queue a stored event for processing; False when full (the sweep will take it)."""
        try:
            self.queue.put_nowait(event_id)
        except asyncio.QueueFull:
            log.warning("webhook queue full: the event waits for the sweep")
            return False
        return True

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued event was processed (tests, benchmarks)."""
        await self.queue.join()

    async def _work(self) -> None:
        while True:
            event_id = await self.queue.get()
            try:
                await process_event_safely(
                    self.db, self.broker, self.settings, event_id, self.cache
                )
            finally:
                self.queue.task_done()


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
