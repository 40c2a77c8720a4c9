"""Processing one webhook event, stored or new, in one transaction: a share per workspace;
or a queued batch of one workspace's events in one transaction (`process_batch`)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel import select as sqlmodel_select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.crossings import Route
from weflux.auth.scoping import use_workspace
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    TemplateStatusEvent,
    WebhookEvent,
    WebhookEventStatus,
    new_id,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.services import folding, templates
from weflux.services.channel_cache import ChannelCache
from weflux.services.ingest.accounts import _account_changes
from weflux.services.ingest.inbound import _BATCH_KEY, _OPTIMISTIC_KEY, _ingest_messages
from weflux.services.ingest.routing import _route, _routes, _Share
from weflux.services.ingest.statuses import _apply_statuses
from weflux.services.ingest.writes import (
    _WEBHOOK_EVENTS,
    _send_held,
    event_row_held,
    hold_event_row,
    send_event_row,
)
from weflux.sql_lists import array_lists
from weflux.whatsapp.parser import parse_webhook


async def _process_share(
    session: AsyncSession, broker: Broker, settings: Settings, org_id: uuid.UUID, share: _Share
) -> None:
    await _send_held(session)  # a previous share's, in its workspace
    # The feed lock first, in the scope's statement: the share writes several feed rows.
    await use_workspace(session, org_id, feed_lock=bool(share.messages or share.statuses))
    if share.messages:
        await _ingest_messages(session, broker, settings, org_id, share.messages)
        if share.statuses or share.templates or share.quality or share.account:
            await _send_held(session)
    if share.statuses:
        await _apply_statuses(session, broker, org_id, share.statuses)
    for template in share.templates:
        session.add(
            TemplateStatusEvent(
                org_id=org_id,
                business_account_id=template.waba_id,
                template_id=template.template_id,
                template_name=template.template_name,
                language=template.language,
                event=template.event,
                reason=template.reason,
            )
        )
        await templates.apply_status_update(session, template)
    await _account_changes(session, broker, org_id, share)
    await session.flush()


async def _optimistically(attempt: Callable[[bool], Awaitable[None]]) -> None:
    """`attempt(True)`, and if it broke a unique index, `attempt(False)` (a redelivered
    message, or a sender another event created meanwhile: now read first)."""
    try:
        await attempt(True)
    except IntegrityError:
        await attempt(False)


def _mark_processed(
    event: WebhookEvent, note: str | None, now: datetime, *, counted: bool = False
) -> None:
    """The event processed now; `note` replaces an earlier failure's error (resolved).
    `counted`: its attempt was counted before it started (`webhook_attempts.claim`)."""
    event.last_error = note
    event.status = WebhookEventStatus.PROCESSED
    if not counted:
        event.attempts += 1
    event.processed_at = now
    event.next_attempt_at = None


async def process_event(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_id: uuid.UUID,
    *,
    force: bool = False,
    cache: ChannelCache | None = None,
    counted: bool = False,
) -> bool:
    """Process one stored event in one transaction; whether it was processed now.
    `counted`: its attempt was counted before (`webhook_attempts.claim`)."""
    processed = False

    async def attempt(optimistic: bool) -> None:
        nonlocal processed
        async with db.session(webhook_event=event_id) as session:
            session.sync_session.info[_OPTIMISTIC_KEY] = optimistic and not force
            event = (
                await session.exec(
                    sqlmodel_select(WebhookEvent)
                    .where(WebhookEvent.id == event_id)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if event is None or (event.status == WebhookEventStatus.PROCESSED and not force):
                return
            note = await _apply(session, broker, settings, event.body, event.account_id, cache)
            await _send_held(session)
            _mark_processed(event, note, utcnow(), counted=counted)
            processed = True

    await _optimistically(attempt)
    return processed


@dataclass
class Batch:
    """What `process_batch` did with the events it was given."""

    # Processed now: the first workspace's events (and those that concern none).
    processed: list[uuid.UUID] = field(default_factory=list)
    # Left unprocessed: the events of each other workspace, for a batch of their own.
    others: dict[uuid.UUID, list[uuid.UUID]] = field(default_factory=dict)
    # Left unprocessed: events that concern several workspaces, to process alone.
    alone: list[uuid.UUID] = field(default_factory=list)


# A batch's events, claimed: on PostgreSQL one statement for any number of them (their
# ids one array: `array_lists`), not a compiled form and a PREPARE per batch size.
_BATCH_EVENTS = (
    sqlmodel_select(WebhookEvent)
    .where(
        col(WebhookEvent.id).in_(bindparam("event_ids", expanding=True)),
        WebhookEvent.status != WebhookEventStatus.PROCESSED,
    )
    .with_for_update(skip_locked=True)
)


async def process_batch(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_ids: Sequence[uuid.UUID],
    *,
    cache: ChannelCache | None = None,
) -> Batch:
    """Process stored events of ONE workspace in one transaction: their shares merged
    into one (N one-message webhooks become one N-message share, the multi-message path:
    the feed lock taken once, feed positions in the order of the messages' timestamps,
    one commit), each event marked processed in it.

    The workspace is the first event's (in the order given) that concerns exactly one;
    the events of other workspaces, and those concerning several (two feed locks in one
    transaction could deadlock with another taking them in the other order), are left
    unprocessed and named in the answer. Events gone, processed already or locked by
    another transaction (the sweep's, a replay's: claimed FOR UPDATE SKIP LOCKED) are left
    to it. Raises on any failure, having written nothing: the caller then processes each
    event alone (`process_event`), so one poison event fails alone. Optimistic, as
    `process_event`: a redelivered message breaks a unique index, and the batch runs once
    more asking which messages are stored (`_optimistically`).
    """
    batch = Batch()

    async def attempt(optimistic: bool) -> None:
        nonlocal batch
        batch = Batch()  # a failed attempt's findings go with its transaction
        async with db.session(webhook_event=tuple(event_ids)) as session:
            session.sync_session.info[_OPTIMISTIC_KEY] = optimistic
            session.sync_session.info[_BATCH_KEY] = True
            claim, params = _BATCH_EVENTS, {"event_ids": list(event_ids)}
            if db.dialect == "postgresql":
                claim, params = array_lists(claim, params)
            events = (await session.exec(claim, params=params)).all()
            order = {event_id: k for k, event_id in enumerate(event_ids)}
            mine: list[WebhookEvent] = []
            merged = _Share()
            workspace: uuid.UUID | None = None
            notes: dict[uuid.UUID, str | None] = {}
            for event in sorted(events, key=lambda e: order[e.id]):
                shares, notes[event.id] = await _shares(
                    session, event.body, event.account_id, cache
                )
                if len(shares) > 1:
                    batch.alone.append(event.id)
                    continue
                if shares:
                    (org_id,) = shares
                    if workspace is None:
                        workspace = org_id
                    elif org_id != workspace:
                        batch.others.setdefault(org_id, []).append(event.id)
                        continue
                    merged.add(shares[org_id])
                mine.append(event)
            if workspace is not None:
                await _process_share(session, broker, settings, workspace, merged)
            await _send_held(session)
            now = utcnow()
            for event in mine:
                _mark_processed(event, notes[event.id], now)
                batch.processed.append(event.id)

    await _optimistically(attempt)
    return batch


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A verified webhook as received, before any row of it exists (a plain object: the
    hot path builds no ORM instance for it, `store_and_process` INSERTs it with Core)."""

    body: bytes
    account_id: uuid.UUID | None
    id: uuid.UUID = field(default_factory=new_id)
    received_at: datetime = field(default_factory=utcnow)
    body_sha256: str = ""

    @classmethod
    def of(cls, body: bytes, account_id: uuid.UUID | None) -> ReceivedEvent:
        return cls(body, account_id, body_sha256=hashlib.sha256(body).hexdigest())


async def store_and_process(
    db: Database,
    broker: Broker,
    settings: Settings,
    event: ReceivedEvent,
    cache: ChannelCache | None = None,
) -> None:
    """Store a new verified event and process it, both in one transaction.

    The event is written already processed, so it is durable exactly when its effects
    are: the caller answers 200 once this returns, and on failure stores the event alone
    (`weflux.services.webhook_queue.store`) before answering. One transaction instead of
    two, and no reading back of the row just written (issue 11).
    """

    async def attempt(optimistic: bool) -> None:
        async with db.session(webhook_event=event.id) as session:
            session.sync_session.info[_OPTIMISTIC_KEY] = optimistic
            shares, note = await _shares(session, event.body, event.account_id, cache)
            # One Core INSERT (no ORM instance or flush), after the share's writes: on
            # PostgreSQL folded into their statement, on SQLite in their greenlet.
            row = {
                "id": event.id,
                "received_at": event.received_at,
                "account_id": event.account_id,
                "body": event.body,
                "body_sha256": event.body_sha256,
                "status": WebhookEventStatus.PROCESSED,
                "attempts": 1,
                "last_error": note,
                "next_attempt_at": None,
                "processed_at": utcnow(),
            }
            sqlite = session.sync_session.get_bind().dialect.name != "postgresql"
            if sqlite:
                hold_event_row(session, row)
            for org_id, share in shares.items():
                await _process_share(session, broker, settings, org_id, share)
            if not sqlite and not await _send_held(session, folding.Insert(_WEBHOOK_EVENTS, [row])):
                hold_event_row(session, row)  # nothing held to fold it into
            if event_row_held(session):  # no share's greenlet wrote it
                await session.run_sync(send_event_row)

    await _optimistically(attempt)


def received_copy(event: ReceivedEvent) -> WebhookEvent:
    """A new, unprocessed row of the event as it was received."""
    return WebhookEvent(
        id=event.id,
        received_at=event.received_at,
        account_id=event.account_id,
        body=event.body,
        body_sha256=event.body_sha256,
    )


# What in a webhook's raw bytes may decode to a string no database can store: a NUL
# (`\u0000`: PostgreSQL's text and jsonb refuse it) or a lone surrogate (an escaped one
# with no partner, or one encoded in the bytes: neither sqlite3 nor asyncpg encodes it).
# Escaped pairs (Meta's emoji) decode to one character and do not match. A false match
# (an escaped backslash before `u`) only costs `_storable`'s walk.
_UNSTORABLE_TEXT = re.compile(
    rb"\\u0000"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\xed[\xa0-\xbf]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """`value` (parsed JSON) with every string storable on both engines: NULs dropped,
    lone surrogates replaced by U+FFFD. The event is processed as SQLite would otherwise
    have stored it, instead of failing on PostgreSQL (or on both) at every retry and
    losing every message of its body."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


async def _apply(
    session: AsyncSession,
    broker: Broker,
    settings: Settings,
    raw: bytes,
    account_id: uuid.UUID | None,
    cache: ChannelCache | None,
) -> str | None:
    """Process an event's body; what the event's `last_error` should say (None: nothing)."""
    shares, note = await _shares(session, raw, account_id, cache)
    for org_id, share in shares.items():
        await _process_share(session, broker, settings, org_id, share)
    return note


async def _shares(
    session: AsyncSession, raw: bytes, account_id: uuid.UUID | None, cache: ChannelCache | None
) -> tuple[dict[uuid.UUID, _Share], str | None]:
    """An event's body routed: its share per workspace, and what its `last_error` says."""
    try:
        body = json.loads(raw)
        if _UNSTORABLE_TEXT.search(raw):
            body = _storable(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested past Python's stack
        body = None
    parsed = parse_webhook(body)
    note = None
    if body is None or parsed.unknown:
        note = "not JSON" if body is None else f"{len(parsed.unknown)} part(s) not understood"
    routes: list[Route] = []
    if parsed.phone_number_ids or parsed.waba_ids:
        routes = await _routes(session, parsed, account_id, cache)
    return _route(parsed, routes), note


async def concerned_workspaces(
    session: AsyncSession, raw: bytes, account_id: uuid.UUID | None
) -> list[uuid.UUID]:
    """The workspaces a stored body concerns, as processing routes it: ids for an
    operator's log line: those with a live number or business account the body names.
    None when the body is not JSON or names none."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    parsed = parse_webhook(body)
    if not (parsed.phone_number_ids or parsed.waba_ids):
        return []
    routes = await _routes(session, parsed, account_id, None)
    return sorted({route.org_id for route in routes}, key=str)
