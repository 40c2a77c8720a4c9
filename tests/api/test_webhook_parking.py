"""Stored webhook events that keep failing: retried a bounded number of times, then parked
(no more automatic retries), reported once, listed, and replayed on demand
(weflux.services.webhook_queue)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from tests.fixtures import webhooks as wh
from tests.fixtures.live import signed_webhook
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Message, WebhookEvent, WebhookEventStatus, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of
from weflux.services import webhook_attempts, webhook_queue
from weflux.services.ingest import process

ATTEMPTS = 3
SECRET_SENDER = "16505559876"  # the customer whose message cannot be processed


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """The platform's webhooks signed as `signed_webhook` signs them; parked after 3."""
    return live_settings.model_copy(update={"webhook_max_attempts": ATTEMPTS})


def _text_from(sender: str, body: str) -> dict[str, Any]:
    change = wh.messages_change(
        messages=[wh.text_message(from_wa_id=sender, body=body)],
        contacts=[wh.contact(wa_id=sender)],
    )
    return wh.webhook_body(change)


async def _messages(db: Database, org_id: uuid.UUID) -> list[str]:
    async with db.session(org_id) as session:
        return [m.text or "" for m in (await session.exec(select(Message))).all()]


async def _event(owner_db: Database, event_id: uuid.UUID) -> WebhookEvent:
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        event = await session.get(WebhookEvent, event_id)
    assert event is not None
    return event


async def _make_due(owner_db: Database, event_id: uuid.UUID) -> None:
    async with owner_db.session(all_workspaces="test: due now") as session:
        event = await session.get(WebhookEvent, event_id)
        assert event is not None
        event.next_attempt_at = utcnow()


async def _sweep(app: Any) -> int:
    runtime = runtime_of(app)
    return await webhook_queue.retry_due_events(runtime.db, runtime.broker, runtime.settings)


def _failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing fails as a unique index would, quoting the customer's WhatsApp id."""
    original = process._process_share

    async def broken(*args: Any, **kwargs: Any) -> None:
        share = args[-1]
        if any(message.from_wa_id == SECRET_SENDER for message, _ in share.messages):
            raise RuntimeError(f"DETAIL: Key (wa_id)=({SECRET_SENDER}) already exists.")
        await original(*args, **kwargs)

    monkeypatch.setattr(process, "_process_share", broken)


async def _parked_event(
    app: Any, client: httpx.AsyncClient, owner_db: Database, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    """A webhook whose processing fails ATTEMPTS times: in the request, then by two sweeps."""
    _failing(monkeypatch)
    assert (await signed_webhook(client, _text_from(SECRET_SENDER, "stuck"))).status_code == 200
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        (event_id,) = (await session.exec(select(WebhookEvent.id))).all()
    for attempt in range(1, ATTEMPTS):
        event = await _event(owner_db, event_id)
        assert (event.status, event.attempts) == (WebhookEventStatus.FAILED, attempt)
        assert event.next_attempt_at is not None
        await _make_due(owner_db, event_id)
        assert await _sweep(app) == 1
    return event_id


async def test_a_failing_event_is_retried_then_parked_and_reported_once(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
    owner_db: Database,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given WEFLUX_WEBHOOK_MAX_ATTEMPTS=3 and a webhook whose processing always fails
    with an error quoting the customer's WhatsApp id,
    when it fails in the request and the worker's sweep retries it,
    then it is FAILED (due again) after the first and second attempts and PARKED (no
    next attempt) after the third; one ERROR line says so, with the event id, the
    workspace, the attempts and the error's class; each attempt is a WARNING with the
    code's stack; no line holds the body or the error's message; `last_error` keeps the
    class and where, not the message."""
    caplog.set_level(logging.INFO)
    event_id = await _parked_event(app, client, owner_db, monkeypatch)

    event = await _event(owner_db, event_id)
    assert (event.status, event.attempts, event.next_attempt_at) == (
        WebhookEventStatus.PARKED,
        ATTEMPTS,
        None,
    )
    assert event.last_error is not None
    assert event.last_error.startswith("RuntimeError at weflux/services/ingest/process.py:")
    assert SECRET_SENDER not in event.last_error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    (record,) = errors
    assert record.getMessage().startswith("webhook event parked")
    assert (record.event, record.workspaces, record.attempts, record.error) == (  # type: ignore[attr-defined]
        str(event_id),
        str(channel.org_id),
        ATTEMPTS,
        "RuntimeError",
    )
    attempts = [r for r in caplog.records if r.getMessage() == "webhook processing failed"]
    assert len(attempts) == ATTEMPTS
    assert {r.levelno for r in attempts} == {logging.WARNING}
    assert "in broken < " in attempts[0].stack  # type: ignore[attr-defined]
    for logged in caplog.records:
        assert logged.exc_info is None
        for private in (SECRET_SENDER, "stuck", "already exists"):
            assert private not in repr(logged.__dict__)


async def test_a_parked_event_is_not_retried_and_does_not_hold_up_others(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
    db: Database,
    owner_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a parked event (which would now succeed: the fault is fixed),
    when other webhooks come (one left for the sweep) and the sweep runs again and again,
    then the parked event is never retried (attempts unchanged, no message of it) while
    the others are processed."""
    event_id = await _parked_event(app, client, owner_db, monkeypatch)
    monkeypatch.undo()
    assert (await signed_webhook(client, _text_from("16505550001", "fine"))).status_code == 200
    runtime = runtime_of(app)
    await runtime.webhook_intake.stop()
    runtime.webhook_intake.inline_free = 0  # stored only: the sweep processes it
    assert (await signed_webhook(client, _text_from("16505550002", "later"))).status_code == 200
    swept = await webhook_queue.retry_due_events(
        runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
    )
    assert swept == 1
    assert await _sweep(app) == 0

    assert sorted(await _messages(db, channel.org_id)) == ["fine", "later"]
    event = await _event(owner_db, event_id)
    assert (event.status, event.attempts) == (WebhookEventStatus.PARKED, ATTEMPTS)


async def test_replay_of_the_parked_events_clears_them(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
    db: Database,
    owner_db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a parked event listed by `weflux webhooks failed` (exit 1),
    when it is replayed while the fault persists, it stays parked (and listed);
    when `--parked` replays it once the fault is fixed, it is processed: no error, no
    next attempt, its message written, and the list is empty (exit 0)."""
    event_id = await _parked_event(app, client, owner_db, monkeypatch)
    found = await webhook_queue.failures(owner_db)
    assert (found.parked, found.retrying, [e.id for e in found.events]) == (1, 0, [event_id])
    assert "PARKED  attempts=3  RuntimeError at weflux/" in found.lines()[0]
    assert SECRET_SENDER not in "\n".join(found.lines())

    runtime = runtime_of(app)
    replay_args = (runtime.db, runtime.broker, runtime.settings, owner_db)
    assert await webhook_queue.replay(*replay_args, event_id=event_id) == (0, 1)
    event = await _event(owner_db, event_id)
    assert (event.status, event.attempts) == (WebhookEventStatus.PARKED, ATTEMPTS + 1)

    monkeypatch.undo()
    assert await webhook_queue.replay(*replay_args, status=WebhookEventStatus.PARKED) == (1, 0)
    event = await _event(owner_db, event_id)
    assert (event.status, event.last_error, event.next_attempt_at) == (
        WebhookEventStatus.PROCESSED,
        None,
        None,
    )
    assert await _messages(db, channel.org_id) == ["stuck"]
    found = await webhook_queue.failures(owner_db)
    assert (found.parked, found.retrying, found.events) == (0, 0, [])
    assert await webhook_queue.replay(*replay_args, status=WebhookEventStatus.PARKED) == (0, 0)


async def test_replay_of_one_event_leaves_the_others(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
    db: Database,
    owner_db: Database,
) -> None:
    """Given two processed events,
    when one is replayed by its id,
    then only it is reprocessed (nothing duplicated)."""
    for body in ("one", "two"):
        await signed_webhook(client, _text_from("16505550003", body))
    async with owner_db.session(all_workspaces="test") as session:
        first = (
            await session.exec(select(WebhookEvent.id).order_by(col(WebhookEvent.received_at)))
        ).first()
    runtime = runtime_of(app)
    replayed = await webhook_queue.replay(
        runtime.db, runtime.broker, runtime.settings, owner_db, event_id=first
    )
    assert replayed == (1, 0)
    assert sorted(await _messages(db, channel.org_id)) == ["one", "two"]


async def test_a_database_error_is_stored_without_the_values_it_quotes(
    owner_db: Database, dialect: str
) -> None:
    """Given a unique violation (PostgreSQL's error quotes the duplicated WhatsApp id in
    its DETAIL),
    when it is summarised for `last_error`,
    then the class, the driver's class and codes remain, the value does not."""
    async with owner_db.engine.connect() as conn:
        await conn.execute(text("CREATE TEMPORARY TABLE parking_probe (wa_id VARCHAR(32) UNIQUE)"))
        insert = text("INSERT INTO parking_probe (wa_id) VALUES (:wa_id)")
        await conn.execute(insert, {"wa_id": SECRET_SENDER})
        with pytest.raises(IntegrityError) as raised:
            await conn.execute(insert, {"wa_id": SECRET_SENDER})
        await conn.rollback()
    if dialect == "postgresql":  # PostgreSQL's DETAIL: Key (wa_id)=(…) already exists.
        assert SECRET_SENDER in raised.value.orig.__cause__.detail  # type: ignore[union-attr]
    summary = webhook_attempts.error_summary(raised.value)
    assert SECRET_SENDER not in summary
    expected = {
        "postgresql": "IntegrityError (UniqueViolationError 23505 parking_probe_wa_id_key)",
        "sqlite": "IntegrityError (IntegrityError SQLITE_CONSTRAINT_UNIQUE)",
    }[dialect]
    assert summary.split(" at weflux/")[0] == expected, summary


async def test_the_failed_list_counts_retrying_events_without_parking_them(
    owner_db: Database, db: Database
) -> None:
    """Given one event retrying and none parked,
    then the list shows it with its next attempt, and counts no parked event (exit 0)."""
    event_id = uuid.uuid4()
    async with db.session(webhook_event=event_id) as session:
        row = WebhookEvent(id=event_id, body=b"{}", body_sha256="0" * 64)
        webhook_attempts.mark_failed(row, KeyError("x"), max_attempts=ATTEMPTS)
        session.add(row)
    found = await webhook_queue.failures(owner_db)
    assert (found.parked, found.retrying) == (0, 1)
    assert f"{event_id}" in found.lines()[0]
    assert "FAILED  attempts=1  next=" in found.lines()[0]
    async with owner_db.session(all_workspaces="test") as session:
        count = (await session.exec(select(func.count(col(WebhookEvent.id))))).one()
    assert count == 1
