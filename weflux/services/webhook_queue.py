"""The queue of stored webhook events: the intake's bounds, failures recorded for retry,
the worker's sweep, replay.

Every received webhook is stored before the 200 (`weflux.api.webhooks`). While the
process has room (`WebhookIntake`), it is stored and processed in one transaction
(`weflux.services.ingest.store_and_process`) before the answer; under load it is only
stored, and processed by a few queue workers from a bounded in-memory queue, so the
answers keep their share of the event loop and of the database pool. A worker takes what
is queued (up to `BATCH` events) and processes one workspace's events in one transaction
(`ingest.process_batch`: one feed lock and one commit for many, where one event each held
the workspace's feed lock from BEGIN to COMMIT in turn); a batch that fails is retried one
event at a time. While the queue has events, a new webhook joins it rather than being
processed in its request (`WebhookIntake.claim_inline`). An event the full
queue cannot take, or that a killed process held, stays in `webhook_events` unprocessed:
the worker's sweep picks up events that are due or were never processed; an event that
failed is marked for a retry with exponential backoff; `weflux webhooks replay`
reprocesses stored events. The sweep and a replay count each attempt before it starts
(`weflux.services.webhook_attempts`): an event whose processing kills its process is
parked after `WEFLUX_WEBHOOK_MAX_ATTEMPTS` attempts, not retried for ever.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_
from sqlmodel import col, select

from weflux.auth import crossings
from weflux.config import Settings
from weflux.db import Database
from weflux.models import WebhookEvent, WebhookEventStatus, utcnow
from weflux.realtime.broker import Broker
from weflux.services.channel_cache import ChannelCache
from weflux.services.ingest import (
    ReceivedEvent,
    concerned_workspaces,
    process_batch,
    process_event,
    received_copy,
)
from weflux.services.webhook_attempts import Claim, claim, error_summary, mark_failed
from weflux.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# SQLite: how long a webhook waits for a slot to process in its request before it is
# stored alone and queued (`WebhookIntake.for_pool`).
SQLITE_INLINE_WAIT = 0.2
# At most this many queued events are taken at once, and processed a transaction per
# workspace (`process_batch_safely`).
BATCH = 50
# PostgreSQL: from this many events queued or in the queue workers' hands, a request's
# event joins them instead of being processed in the request (`WebhookIntake.claim_inline`).
QUEUE_FIRST_AT = 8


def log_failure(message: str, event_id: uuid.UUID, error: BaseException) -> None:
    """A failed attempt, as a WARNING (parking is the ERROR): the error's summary and its
    stack (innermost first: file, line, function), never the error's message nor a line of
    source (either may quote a customer)."""
    log.warning(
        message,
        extra={
            "event": str(event_id),
            "error": error_summary(error),
            "stack": " < ".join(
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in reversed(traceback.extract_tb(error.__traceback__))
            ),
        },
    )


async def _report_parked(db: Database, event: WebhookEvent, error: str) -> None:
    """The operator's signal: one ERROR line, ids, attempts and the error's class only."""
    try:
        async with db.session() as session:
            workspaces = await concerned_workspaces(session, event.body, event.account_id)
    except Exception:  # the body may be what fails; the line goes out regardless
        workspaces = []
    log.error(
        "webhook event parked: no more automatic retries (weflux webhooks failed; "
        "weflux webhooks replay --parked)",
        extra={
            "event": str(event.id),
            "workspaces": ",".join(str(org_id) for org_id in workspaces) or "unknown",
            "attempts": event.attempts,
            "error": error,
        },
    )


async def store(
    db: Database, settings: Settings, event: ReceivedEvent, failure: BaseException | None = None
) -> None:
    """Write a received event durably as it came (failed, when processing it just failed)."""
    row = received_copy(event)
    parked = failure is not None and mark_failed(
        row, failure, max_attempts=settings.webhook_max_attempts
    )
    async with db.session(webhook_event=row.id) as session:
        session.add(row)
    if parked and failure is not None:
        await _report_parked(db, row, type(failure).__name__)


async def _record_failure(
    db: Database,
    settings: Settings,
    event_id: uuid.UUID,
    error: BaseException,
    *,
    counted: bool = False,
) -> None:
    async with db.session(webhook_event=event_id) as session:
        event = await session.get(WebhookEvent, event_id)
        if event is None:
            return
        parked = mark_failed(
            event, error, max_attempts=settings.webhook_max_attempts, counted=counted
        )
    if parked:
        await _report_parked(db, event, type(error).__name__)


async def _claim(
    db: Database, settings: Settings, event_id: uuid.UUID, *, replay: bool = False
) -> Claim:
    """`webhook_attempts.claim`, and the ERROR line when it parked the event."""
    claimed, event = await claim(db, settings, event_id, replay=replay)
    if claimed is Claim.PARKED and event is not None:
        # The class-like head of its `last_error` (INTERRUPTED's, unless the limit was
        # lowered under an event that failed otherwise)
        await _report_parked(db, event, (event.last_error or "").split(" ", 1)[0])
    return claimed


async def process_event_safely(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_id: uuid.UUID,
    cache: ChannelCache | None = None,
    *,
    count_first: bool = False,
) -> None:
    """Process an event; a failure is recorded on it for the worker to retry.

    `count_first` (the sweep): the attempt is counted before it starts
    (`webhook_attempts.claim`), so a process that dies in it still spent it."""
    counted = False
    try:
        if count_first:
            claimed = await _claim(db, settings, event_id)
            if claimed is not Claim.COUNTED:
                return
            counted = True
        await process_event(db, broker, settings, event_id, cache=cache, counted=counted)
    except Exception as error:
        log_failure("webhook processing failed", event_id, error)
        try:
            await _record_failure(db, settings, event_id, error, counted=counted)
        except Exception as unrecorded:
            log_failure(
                "could not record the failure; the worker will retry the event",
                event_id,
                unrecorded,
            )


async def process_batch_safely(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_ids: list[uuid.UUID],
    cache: ChannelCache | None = None,
) -> None:
    """Process queued events, a transaction per workspace (`ingest.process_batch`), in the
    order queued; an event concerning several workspaces alone. A batch that breaks a
    unique index (a redelivered message: the batch is optimistic, `process._optimistically`)
    runs once more asking which messages are stored. A batch that fails otherwise, or
    again, wrote nothing: each of its events is then processed alone as
    `process_event_safely` does, so only a failing event fails, and counts an attempt."""
    batches = [event_ids]
    while batches:
        ids = batches.pop(0)
        if len(ids) == 1:
            await process_event_safely(db, broker, settings, ids[0], cache)
            continue
        try:
            batch = await process_batch(db, broker, settings, ids, cache=cache)
        except Exception as error:
            log.info(
                "webhook batch failed: its events are processed one by one",
                extra={"events": len(ids), "error": error_summary(error)},
            )
            for event_id in ids:
                await process_event_safely(db, broker, settings, event_id, cache)
            continue
        batches.extend(batch.others.values())
        for event_id in batch.alone:
            await process_event_safely(db, broker, settings, event_id, cache)


class WebhookIntake:
    """How a process takes in verified webhooks without being overrun.

    At most `inline` events are stored and processed in the request, each in one
    transaction (`ingest.store_and_process`), and none while the queue workers have
    events; beyond that an event is only stored, and queued for `workers` tasks in a
    queue of `queued` ids at most, each taking up to `batch` at once
    (`process_batch_safely`). An id the full queue
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
        inline_wait: float = 0.0,
        batch: int = BATCH,
        queue_first_at: int | None = QUEUE_FIRST_AT,
    ) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings
        self.cache = cache
        self.inline_free = inline
        # How long a request may wait for a slot, in turn, before it is stored alone.
        self.inline_wait = inline_wait
        # From how many events the queue workers have, a request is refused a slot
        # (`claim_inline`); None: never.
        self.queue_first_at = queue_first_at
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.workers = workers
        self.batch = batch
        # Events offered and not yet processed by a queue worker.
        self._unfinished = 0
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
        the rest stays free for the answers' own writes and the API.

        On PostgreSQL a request joins the queue while it has a backlog (`claim_inline`),
        so a burst is processed in batches: one feed lock and one commit per batch, where
        each request's own transaction held its workspace's feed lock in turn (about
        190-230 one-message webhooks/s processed for one workspace, 2026-12-06).

        On SQLite a request with no free slot waits for one, in turn, up to
        `SQLITE_INLINE_WAIT`: one writer at a time holds the database's write lock, so
        storing the event alone first would not answer sooner (that unit waits its turn at
        the lock too) and would double the units of work: stored, then processed (read
        back, updated). Under a burst that halved what was processed per second. Waiting
        for a slot holds no connection."""
        sqlite = db.dialect == "sqlite"
        return cls(
            db,
            broker,
            settings,
            cache,
            inline=max(1, pool_size // 2),
            inline_wait=SQLITE_INLINE_WAIT if sqlite else 0.0,
            # SQLite: one event per transaction and no queue first, as before: batches
            # measured no better there (one writer; a request waiting for a slot is
            # already one unit of work per webhook).
            batch=1 if sqlite else BATCH,
            queue_first_at=None if sqlite else QUEUE_FIRST_AT,
        )

    async def claim_inline(self) -> bool:
        """Whether this request may process its event now (then `release_inline` after):
        a free slot, or one given back within `inline_wait` (first come, first served);
        never while the queue workers have `queue_first_at` events or more (queued or
        being processed): it joins them, to be processed in a batch (one feed lock and one
        commit for many) rather than take its workspace's feed lock once more on its own.
        Below that (a moment's overflow, not a backlog) it is processed in its request."""
        if self.queue_first_at is not None and self._unfinished >= self.queue_first_at:
            return False
        if self.inline_free > 0 and not self._waiting:
            self.inline_free -= 1
            return True
        if self.inline_wait <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.inline_wait):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self.release_inline()  # handed a slot it will not use: the next one's
            else:
                waiter.cancel()  # dropped from the line when `release_inline` reaches it
            if isinstance(error, TimeoutError):
                return False
            raise
        return True

    def release_inline(self) -> None:
        """Give a slot back: to the first request still waiting for one, else free."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inline_free += 1

    def offer(self, event_id: uuid.UUID) -> bool:
        """Queue a stored event for processing; False when full (the sweep will take it)."""
        try:
            self.queue.put_nowait(event_id)
        except asyncio.QueueFull:
            log.warning("webhook queue full: the event waits for the sweep")
            return False
        self._unfinished += 1
        return True

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued event was processed (tests, benchmarks)."""
        await self.queue.join()

    async def _work(self) -> None:
        while True:
            taken = [await self.queue.get()]
            while len(taken) < self.batch and not self.queue.empty():
                taken.append(self.queue.get_nowait())
            try:
                await process_batch_safely(self.db, self.broker, self.settings, taken, self.cache)
            finally:
                self.finished(taken)

    def finished(self, taken: list[uuid.UUID]) -> None:
        """Queued events a worker took are done with: processed, failed (recorded for the
        sweep) or left unprocessed by a cancelled worker (the sweep takes them)."""
        self._unfinished = max(0, self._unfinished - len(taken))
        for _ in taken:
            self.queue.task_done()


async def retry_due_events(
    db: Database,
    broker: Broker,
    settings: Settings,
    *,
    batch_size: int = 50,
    settle: timedelta = timedelta(seconds=30),
) -> int:
    """The worker's sweep: events never processed (a crash after the 200) or failed and due;
    each attempt counted before it starts (a process killed in it does not loop for ever)."""
    now = utcnow()
    async with db.session() as session:
        due = await crossings.due_webhook_events(
            session, now=now, settled_before=now - settle, batch=batch_size
        )
    for event_id in due:
        await process_event_safely(db, broker, settings, event_id, count_first=True)
    return len(due)


async def replay(
    db: Database,
    broker: Broker,
    settings: Settings,
    events: Database,
    *,
    since: Any = None,
    status: WebhookEventStatus | None = None,
    event_id: uuid.UUID | None = None,
) -> tuple[int, int]:
    """Reprocess stored events (all, or those received since `since`, of `status`, or the
    one `event_id`): (processed, failed). A failure is recorded as the sweep's are (a
    parked event stays parked); one event failing never stops the others.

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
            if status is not None:
                query = query.where(col(WebhookEvent.status) == status)
            if event_id is not None:
                query = query.where(col(WebhookEvent.id) == event_id)
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
        for received_at, stored_id in batch:
            counted = False
            try:
                # Counted first, as the sweep's: a replay that kills its process leaves
                # the event FAILED (for the sweep) or PARKED, not PENDING for ever.
                claimed = await _claim(db, settings, stored_id, replay=True)
                counted = claimed is Claim.COUNTED
                if claimed in (Claim.COUNTED, Claim.UNCOUNTED):
                    await process_event(
                        db, broker, settings, stored_id, force=True, counted=counted
                    )
                processed += 1
            except Exception as error:
                failed += 1
                log_failure("replay failed", stored_id, error)
                await _record_failure(db, settings, stored_id, error, counted=counted)
            last = (received_at, stored_id)


@dataclass(frozen=True)
class Failures:
    """Stored events whose processing failed: how many are parked and retrying, and the
    first of them (parked first, then retrying; oldest first)."""

    parked: int
    retrying: int
    events: list[WebhookEvent]

    def lines(self) -> list[str]:
        """One line per event (its `last_error` holds no personal data), then the counts."""
        lines = [
            f"{e.id}  {e.received_at:%Y-%m-%d %H:%M:%S}  {e.status.value}  attempts={e.attempts}"
            + (f"  next={e.next_attempt_at:%H:%M:%S}" if e.next_attempt_at else "")
            + f"  {e.last_error or ''}"
            for e in self.events
        ]
        shown = (
            ""
            if len(self.events) == self.parked + self.retrying
            else f" ({len(self.events)} shown)"
        )
        hint = " (no more automatic retries: weflux webhooks replay --parked)"
        lines.append(
            f"{self.parked} parked{hint if self.parked else ''}, {self.retrying} retrying{shown}"
        )
        return lines


async def failures(events: Database, *, limit: int = 500) -> Failures:
    """The failed and parked events, through the schema owner's handle (`events`)."""
    status = col(WebhookEvent.status)
    wanted = status.in_([WebhookEventStatus.PARKED, WebhookEventStatus.FAILED])
    async with events.session(all_workspaces="list failed webhook events") as session:
        counts = dict(
            (await session.exec(select(status, func.count()).where(wanted).group_by(status))).all()
        )
        rows = (
            await session.exec(
                select(WebhookEvent)
                .where(wanted)
                .order_by(
                    case((status == WebhookEventStatus.PARKED, 0), else_=1),
                    col(WebhookEvent.received_at),
                    col(WebhookEvent.id),
                )
                .limit(limit)
            )
        ).all()
    return Failures(
        parked=counts.get(WebhookEventStatus.PARKED, 0),
        retrying=counts.get(WebhookEventStatus.FAILED, 0),
        events=list(rows),
    )
