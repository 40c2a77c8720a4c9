"""Queued webhook events processed several per transaction (weflux.services.ingest's
`process_batch`, the queue workers' `webhook_queue.process_batch_safely`): one workspace's
events merged into one share, one feed lock and one commit for many, each event marked
processed in it; whatever fails falls back to one event at a time, so only a failing
event fails. On both engines; events published through the in-process broker and Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.inbound import keyed_number, outbound_message, stored_message
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    Message,
    MessageStatus,
    Organization,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.broker import Broker, InProcessBroker
from weflux.realtime.events import EventName, workspace_channel
from weflux.services import ingest, webhook_queue
from weflux.services.ingest import process
from weflux.whatsapp import parser

GUARD = 30  # seconds; a wait for what must come


def _body(sender: str, wamid: str, at: int, *, phone: str = wh.PHONE_NUMBER_ID) -> bytes:
    change = wh.messages_change(
        messages=[wh.text_message(wamid, from_wa_id=sender, body=wamid, timestamp=at)],
        contacts=[wh.contact(wa_id=sender)],
        phone_number_id=phone,
    )
    return wh.encode(wh.webhook_body(change))


async def _stored(
    db: Database, settings: Settings, account: WhatsAppAccount, *bodies: bytes
) -> list[uuid.UUID]:
    """Each body stored unprocessed, as the intake stores what it queues."""
    ids = []
    for body in bodies:
        received = ingest.ReceivedEvent.of(body, account.id)
        await webhook_queue.store(db, settings, received)
        ids.append(received.id)
    return ids


async def _events(owner_db: Database, ids: list[uuid.UUID]) -> list[WebhookEvent]:
    async with owner_db.session(all_workspaces="test: read events") as session:
        rows = (await session.exec(select(WebhookEvent).where(col(WebhookEvent.id).in_(ids)))).all()
    by_id = {row.id: row for row in rows}
    return [by_id[event_id] for event_id in ids]


async def _messages(db: Database, org_id: uuid.UUID) -> list[Message]:
    async with db.session(org_id) as session:
        query = select(Message).order_by(col(Message.update_seq))
        return list((await session.exec(query)).all())


@pytest.fixture
async def account(db: Database, settings: Settings, org: Organization) -> WhatsAppAccount:
    return await keyed_number(db, settings, org.id)


async def test_a_batch_is_processed_as_its_events_one_by_one_in_one_transaction(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    broker: Broker,
) -> None:
    """Given four stored one-message webhooks, three from one new sender (one of them
    older than the others) and one from another,
    when they are processed as one batch,
    then two contacts and two conversations; the first sender's conversation counts three
    unread and shows its newest message; feed positions follow the messages' timestamps;
    each event is processed (one attempt); and after the commit each message is announced
    once, each conversation updated."""
    org_id = account.org_id
    heard: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def listen(message: dict[str, Any]) -> None:
        heard.append(message)
        if message["event"] == "test.end":
            ended.set()

    await broker.subscribe(workspace_channel(org_id), listen)
    now = int(utcnow().timestamp())
    ids = await _stored(
        db,
        settings,
        account,
        _body("16505550001", "wamid.b-2", now),
        _body("16505550002", "wamid.b-other", now + 1),
        _body("16505550001", "wamid.b-3", now + 2),
        _body("16505550001", "wamid.b-1", now - 5),
    )

    batch = await ingest.process_batch(db, broker, settings, ids)

    assert batch.processed == ids
    assert (batch.others, batch.alone) == ({}, [])
    events = await _events(owner_db, ids)
    assert [(e.status, e.attempts, e.last_error) for e in events] == [
        (WebhookEventStatus.PROCESSED, 1, None)
    ] * 4
    messages = await _messages(db, org_id)
    assert [m.wa_message_id for m in messages] == [
        "wamid.b-1",
        "wamid.b-2",
        "wamid.b-other",
        "wamid.b-3",
    ]
    async with db.session(org_id) as session:
        contacts = (await session.exec(select(Contact))).all()
        conversations = (await session.exec(select(Conversation))).all()
    assert sorted(c.wa_id or "" for c in contacts) == ["16505550001", "16505550002"]
    (first,) = [c for c in conversations if c.unread_count == 3]
    (other,) = [c for c in conversations if c.unread_count == 1]
    newest = messages[-1]
    assert (first.last_message_id, first.last_message_at) == (newest.id, newest.created_at)
    assert first.last_inbound_at == newest.created_at
    # Published after the commit: a later message on the channel proves nothing else came
    await broker.publish(workspace_channel(org_id), {"event": "test.end"})
    async with asyncio.timeout(GUARD):
        await ended.wait()
    added = [m["id"] for m in heard if m["event"] == EventName.MESSAGE_ADDED]
    updated = {m["id"] for m in heard if m["event"] == EventName.CONVERSATION_UPDATED}
    assert sorted(added) == sorted(str(m.id) for m in messages)
    assert updated == {str(first.id), str(other.id)}


async def test_a_poison_event_in_a_batch_fails_alone(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given three queued events, the middle one failing whenever it is processed,
    when the queue worker processes them as a batch,
    then the batch fails whole and each event is processed alone: the other two are
    processed, the poison one failed with one attempt counted, due again."""
    parse = parser.parse_webhook

    def poisoned(body: Any) -> Any:
        if "wamid.poison" in str(body):
            raise ValueError("poison")
        return parse(body)

    monkeypatch.setattr(process, "parse_webhook", poisoned)
    now = int(utcnow().timestamp())
    ids = await _stored(
        db,
        settings,
        account,
        _body("16505550011", "wamid.p-1", now),
        _body("16505550012", "wamid.poison", now + 1),
        _body("16505550013", "wamid.p-2", now + 2),
    )

    await webhook_queue.process_batch_safely(db, InProcessBroker(), settings, ids)

    good, poison, other = await _events(owner_db, ids)
    assert (good.status, good.attempts) == (WebhookEventStatus.PROCESSED, 1)
    assert (other.status, other.attempts) == (WebhookEventStatus.PROCESSED, 1)
    assert (poison.status, poison.attempts) == (WebhookEventStatus.FAILED, 1)
    assert (poison.last_error or "").startswith("ValueError")
    assert poison.next_attempt_at is not None
    messages = await _messages(db, account.org_id)
    assert sorted(m.wa_message_id or "" for m in messages) == ["wamid.p-1", "wamid.p-2"]


async def test_a_redelivered_message_in_a_batch_is_stored_once(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a message already processed, and a batch holding its redelivery, a new
    message, and that new message delivered twice,
    when the queue worker processes the batch,
    then every event is processed and each message stored once, by the batch run again
    not optimistic (not each event alone)."""
    broker = InProcessBroker()
    now = int(utcnow().timestamp())
    (first,) = await _stored(db, settings, account, _body("16505550021", "wamid.r-1", now))
    assert await ingest.process_event(db, broker, settings, first)
    ids = await _stored(
        db,
        settings,
        account,
        _body("16505550022", "wamid.r-2", now + 1),
        _body("16505550021", "wamid.r-1", now),
        _body("16505550022", "wamid.r-2", now + 1),
    )

    alone: list[uuid.UUID] = []

    async def one_by_one(*args: Any, **kwargs: Any) -> None:
        alone.append(args[3])

    monkeypatch.setattr(webhook_queue, "process_event_safely", one_by_one)

    await webhook_queue.process_batch_safely(db, broker, settings, ids)

    events = await _events(owner_db, ids)
    assert [e.status for e in events] == [WebhookEventStatus.PROCESSED] * 3
    messages = await _messages(db, account.org_id)
    assert sorted(m.wa_message_id or "" for m in messages) == ["wamid.r-1", "wamid.r-2"]
    # In a batch again, asking first which messages are stored: not 3 transactions alone.
    assert alone == []


def _status_body(wamid: str, status: str, at: int) -> bytes:
    change = wh.messages_change(statuses=[wh.status(wamid, status, timestamp=at)])
    return wh.encode(wh.webhook_body(change))


async def test_a_batch_of_one_messages_statuses_out_of_order_ends_at_the_latest(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    broker: Broker,
) -> None:
    """Given an outbound message, and its statuses queued out of order (delivered, read,
    then sent: Meta does not promise their order), each its own webhook,
    when they are processed as one batch (their statuses merged, by timestamp),
    then every event is processed and the message is READ: a status never moves back."""
    now = int(utcnow().timestamp())
    (first,) = await _stored(db, settings, account, _body("16505550041", "wamid.s-in", now))
    assert await ingest.process_event(db, broker, settings, first)
    message = await outbound_message(db, account.org_id, "wamid.s-out")
    ids = await _stored(
        db,
        settings,
        account,
        _status_body("wamid.s-out", "delivered", now + 2),
        _status_body("wamid.s-out", "read", now + 3),
        _status_body("wamid.s-out", "sent", now + 1),
    )

    batch = await process.process_batch(db, broker, settings, ids)

    assert batch.processed == ids
    events = await _events(owner_db, ids)
    assert [e.status for e in events] == [WebhookEventStatus.PROCESSED] * 3
    assert (await stored_message(db, message)).status == MessageStatus.READ


async def test_two_workspaces_interleaved_in_the_queue_each_get_their_batch(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    other_org: Organization,
) -> None:
    """Given events of two workspaces' numbers queued in turn,
    when a batch of them all is processed,
    then the first workspace's are processed in it and the other's are left, named, for a
    batch of their own (never two workspaces' feed locks in one transaction); the queue
    worker processes both, each message in its own workspace."""
    theirs = await keyed_number(
        db, settings, other_org.id, phone_number_id="222000111", business_account_id="333000111"
    )
    now = int(utcnow().timestamp())
    mine_1, theirs_1, mine_2, theirs_2 = [
        *await _stored(db, settings, account, _body("16505550031", "wamid.w-1", now)),
        *await _stored(
            db, settings, theirs, _body("16505550032", "wamid.w-2", now, phone="222000111")
        ),
        *await _stored(db, settings, account, _body("16505550033", "wamid.w-3", now)),
        *await _stored(
            db, settings, theirs, _body("16505550034", "wamid.w-4", now, phone="222000111")
        ),
    ]
    broker = InProcessBroker()

    batch = await ingest.process_batch(db, broker, settings, [mine_1, theirs_1, mine_2, theirs_2])

    assert batch.processed == [mine_1, mine_2]
    assert batch.others == {other_org.id: [theirs_1, theirs_2]}
    await webhook_queue.process_batch_safely(db, broker, settings, [theirs_1, theirs_2])
    events = await _events(owner_db, [mine_1, theirs_1, mine_2, theirs_2])
    assert [e.status for e in events] == [WebhookEventStatus.PROCESSED] * 4
    assert [m.wa_message_id for m in await _messages(db, account.org_id)] == [
        "wamid.w-1",
        "wamid.w-3",
    ]
    assert [m.wa_message_id for m in await _messages(db, other_org.id)] == [
        "wamid.w-2",
        "wamid.w-4",
    ]


async def test_an_event_the_sweep_processed_or_holds_is_not_processed_twice(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    dialect: str,
) -> None:
    """Given three queued events, the first already processed by the worker's sweep and,
    on PostgreSQL, the second locked by a sweep processing it now,
    when the queue's batch takes them,
    then it processes only those no one else has (the locked one skipped, not awaited);
    the sweep then finds nothing left; each message is stored once."""
    broker = InProcessBroker()
    now = int(utcnow().timestamp())
    ids = await _stored(
        db,
        settings,
        account,
        *(_body(f"1650555004{k}", f"wamid.s-{k}", now + k) for k in range(3)),
    )
    await webhook_queue.process_event_safely(db, broker, settings, ids[0], count_first=True)
    if dialect == "postgresql":
        async with db.session(webhook_event=ids[1]) as held:
            locked = select(WebhookEvent).where(WebhookEvent.id == ids[1]).with_for_update()
            assert (await held.exec(locked)).one()
            batch = await ingest.process_batch(db, broker, settings, ids)
        assert batch.processed == [ids[2]]
    else:
        batch = await ingest.process_batch(db, broker, settings, ids)
        assert batch.processed == ids[1:]

    await webhook_queue.retry_due_events(db, broker, settings, settle=timedelta(0))

    events = await _events(owner_db, ids)
    assert [e.status for e in events] == [WebhookEventStatus.PROCESSED] * 3
    assert [e.attempts for e in events] == [1, 1, 1]
    messages = await _messages(db, account.org_id)
    assert sorted(m.wa_message_id or "" for m in messages) == [f"wamid.s-{k}" for k in range(3)]


@pytest.mark.parametrize("step", [1, 2, 3])
async def test_a_worker_cancelled_mid_batch_leaves_its_events_for_the_sweep(
    db: Database,
    owner_db: Database,
    settings: Settings,
    account: WhatsAppAccount,
    step: int,
) -> None:
    """Given three queued events,
    when the queue worker's batch is cancelled at one of its statements (a process
    stopping),
    then nothing of it is written: the events stay unprocessed, and the worker's sweep
    processes each once."""
    broker = InProcessBroker()
    now = int(utcnow().timestamp())
    ids = await _stored(
        db,
        settings,
        account,
        *(_body(f"1650555005{k}", f"wamid.c-{k}", now + k) for k in range(3)),
    )
    task: list[asyncio.Task[Any]] = []
    seen: list[str] = []

    def before_statement(*_: Any) -> None:
        seen.append("statement")
        if len(seen) == step:
            task[0].cancel()

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before_statement)
    try:
        task.append(
            asyncio.create_task(webhook_queue.process_batch_safely(db, broker, settings, ids))
        )
        with pytest.raises(asyncio.CancelledError):
            await task[0]
    finally:
        event.remove(engine, "before_cursor_execute", before_statement)
    assert len(seen) >= step
    events = await _events(owner_db, ids)
    assert [e.status for e in events] == [WebhookEventStatus.PENDING] * 3
    assert await _messages(db, account.org_id) == []

    assert await webhook_queue.retry_due_events(db, broker, settings, settle=timedelta(0)) == 3

    messages = await _messages(db, account.org_id)
    assert [m.wa_message_id for m in messages] == ["wamid.c-0", "wamid.c-1", "wamid.c-2"]


async def test_a_request_joins_the_queue_while_the_workers_have_a_backlog() -> None:
    """Given an intake with free slots to process in requests,
    when the queue workers have a backlog (here 2 events), and until they processed it,
    then a request is refused a slot (its event joins the queue, for a batch); below it,
    and once the queue is done, it may process in the request."""
    intake = webhook_queue.WebhookIntake(
        None,  # type: ignore[arg-type]  # (neither the database nor the broker is used)
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        inline=2,
        queue_first_at=2,
    )

    assert intake.offer(uuid.uuid4())
    assert await intake.claim_inline()  # a moment's overflow: processed in the request
    intake.release_inline()
    assert intake.offer(uuid.uuid4())
    assert not await intake.claim_inline()
    taken = [intake.queue.get_nowait(), intake.queue.get_nowait()]  # a worker's batch
    assert not await intake.claim_inline()
    intake.finished(taken)
    assert await intake.claim_inline()


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_batch_of_a_size_not_seen_before_sends_no_statement_not_seen_before(
    db: Database, settings: Settings, account: WhatsAppAccount
) -> None:
    """Given two batches of two processed (new senders, then a known and a new one),
    when batches of other sizes come (3, 5 and 9 events: a known sender and new ones),
    then they send only statements the first two sent, whatever their size: each is
    compiled and prepared once per connection, not once per batch size on the event loop
    the acknowledgements share (issue 11: the ack p99 under a moment's queue)."""
    engine = db.engine.sync_engine
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    now = int(utcnow().timestamp())
    known = "16505550100"
    sizes = [2, 2, 3, 5, 9]
    seen: set[str] = set()
    event.listen(engine, "before_cursor_execute", record)
    try:
        for k, size in enumerate(sizes):
            senders = [known] + [f"1650556{k:02d}{i:02d}" for i in range(1, size)]
            bodies = [_body(who, f"wamid.s-{k}-{i}", now + i) for i, who in enumerate(senders)]
            ids = await _stored(db, settings, account, *bodies)
            sent.clear()
            batch = await ingest.process_batch(db, InProcessBroker(), settings, ids)
            assert batch.processed == ids
            if k < 2:
                seen.update(sent)
            else:
                assert set(sent) <= seen, (size, sorted(set(sent) - seen))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    messages = await _messages(db, account.org_id)
    assert len(messages) == sum(sizes)
