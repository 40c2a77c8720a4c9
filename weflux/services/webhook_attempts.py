"""Attempts at a stored webhook event: counted before they start (a process that dies
mid-attempt still spent one), failures recorded for retry with a backoff, parking once
`WEFLUX_WEBHOOK_MAX_ATTEMPTS` are spent.

An attempt the sweep or a replay starts is counted first, in a transaction of its own
(`claim`), so an event whose processing kills its process (out of memory, a crash in a C
extension, SIGKILL by an orchestrator while it hangs) cannot loop for ever: each death
spent an attempt, and the claim that finds them all spent parks the event with
`last_error` = `INTERRUPTED`. The request's own attempt (`ingest.store_and_process`, one
transaction that leaves nothing behind when its process dies: Meta gets no 200 and
redelivers) and the intake queue's (the event then waits for the sweep) are not counted
first: the hot path keeps its statements.
"""

from __future__ import annotations

import enum
import logging
import traceback
import uuid
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from weflux.backoff import exponential_backoff
from weflux.config import Settings
from weflux.db import Database
from weflux.models import WebhookEvent, WebhookEventStatus, utcnow

log = logging.getLogger(__name__)

RETRY_BACKOFF_BASE = 5.0  # seconds: a failed event is retried after 5 s to 10 s first
MAX_ATTEMPTS_BACKOFF = timedelta(hours=1)
# How long a claimed attempt is left alone before the sweep may take the event again (as
# a new event is by the sweep's `settle`); a dead process's attempt is retried after it.
CLAIM_LEASE = timedelta(seconds=30)
# `last_error` while an attempt runs, kept when its process died before recording an
# outcome: a class-like summary, as `error_summary`'s.
INTERRUPTED_CLASS = "Interrupted"
INTERRUPTED = f"{INTERRUPTED_CLASS} (the process ended during the attempt: killed or crashed)"
_PACKAGE = Path(__file__).resolve().parents[1]  # weflux/


def error_summary(error: BaseException) -> str:
    """What `last_error` keeps of a failure: its class, a database error's driver class,
    SQLSTATE and constraint, and the line of weflux that raised it. Never its message: a
    driver's quotes values (PostgreSQL's `DETAIL: Key (wa_id)=(…)`, a statement's
    parameters), and a message of ours may quote the body."""
    parts = [type(error).__name__]
    driver = getattr(error, "orig", None)  # SQLAlchemy's DBAPIError: the driver's error
    if isinstance(driver, BaseException):
        driver = driver.__cause__ or driver  # asyncpg's own, under SQLAlchemy's adapter
        codes = [getattr(driver, name, None) for name in _DRIVER_CODES]
        parts.append(
            "(" + " ".join([type(driver).__name__, *(c for c in codes if isinstance(c, str))]) + ")"
        )
    ours = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).resolve().is_relative_to(_PACKAGE)
    ]
    if ours:
        where = Path(ours[-1].filename).resolve().relative_to(_PACKAGE.parent)
        parts.append(f"at {where.as_posix()}:{ours[-1].lineno}")
    return " ".join(parts)[:300]


# Codes and schema names, never values: asyncpg's SQLSTATE and constraint, sqlite3's code.
_DRIVER_CODES = ("sqlstate", "constraint_name", "sqlite_errorname")


def _backoff(attempts: int) -> timedelta:
    return timedelta(
        seconds=exponential_backoff(
            attempts,
            base=RETRY_BACKOFF_BASE,
            cap=MAX_ATTEMPTS_BACKOFF.total_seconds(),
            floor=RETRY_BACKOFF_BASE,
        )
    )


def mark_failed(
    event: WebhookEvent, error: BaseException, *, max_attempts: int, counted: bool = False
) -> bool:
    """Record a failed attempt on the event (`counted`: its claim counted it already): due
    again after a backoff, or parked once it failed `max_attempts` times (only a replay
    retries it then). Whether it is parked."""
    if not counted:
        event.attempts += 1
    event.last_error = error_summary(error)
    if event.attempts >= max_attempts:
        event.status = WebhookEventStatus.PARKED
        event.next_attempt_at = None
        return True
    event.status = WebhookEventStatus.FAILED
    event.next_attempt_at = utcnow() + _backoff(event.attempts)
    return False


class Claim(enum.Enum):
    """What a claim decided about an attempt at an event."""

    COUNTED = "counted"  # process it; the attempt is counted already
    UNCOUNTED = "uncounted"  # process it (a replay of a processed event)
    PARKED = "parked"  # do not: every attempt was spent by processes that died
    NONE = "none"  # do not: gone, processed, or in another process's hands


async def claim(
    db: Database, settings: Settings, event_id: uuid.UUID, *, replay: bool = False
) -> tuple[Claim, WebhookEvent | None]:
    """Count an attempt at a stored event before it starts, committed on return.

    The event becomes FAILED (a PARKED one, replayed, stays PARKED) with `last_error` =
    `INTERRUPTED` and is due again after its backoff (at least `CLAIM_LEASE`): what
    remains if the process dies before the attempt records its outcome. The sweep's claim
    of an event whose attempts are all spent parks it instead; a replay's (an operator's
    order) counts one more. On PostgreSQL an event another process is processing (its row
    locked) is left to it.
    """
    async with db.session(webhook_event=event_id) as session:
        event = (
            await session.exec(
                select(WebhookEvent)
                .where(WebhookEvent.id == event_id)
                .with_for_update(skip_locked=True)
            )
        ).first()
        if event is None:
            return Claim.NONE, None
        if event.status == WebhookEventStatus.PROCESSED:
            return (Claim.UNCOUNTED if replay else Claim.NONE), event
        if event.status != WebhookEventStatus.PENDING and event.last_error == INTERRUPTED:
            log.warning(
                "webhook attempt interrupted: its process ended before recording an outcome",
                extra={"event": str(event_id), "attempts": event.attempts},
            )
        if not replay and event.attempts >= settings.webhook_max_attempts:
            event.status = WebhookEventStatus.PARKED
            event.next_attempt_at = None
            return Claim.PARKED, event
        event.attempts += 1
        event.last_error = INTERRUPTED
        if event.status != WebhookEventStatus.PARKED:
            event.status = WebhookEventStatus.FAILED
            event.next_attempt_at = utcnow() + max(CLAIM_LEASE, _backoff(event.attempts))
        return Claim.COUNTED, event
