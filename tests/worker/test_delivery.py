"""The delivery worker: outbox rows to the (fake) Cloud API over real HTTP, on both dialects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.deaths import Died, WorkerProcess
from tests.fixtures.factories import Actor
from tests.fixtures.meta import ACCESS_TOKEN, OTHER_PHONE_NUMBER_ID, PHONE_NUMBER_ID
from tests.fixtures.outbound import (
    CUSTOMER_WA_ID,
    Scene,
    load_message,
    make_account,
    make_conversation,
    queue_text,
    update_message,
)
from tests.fixtures.principals import principal_of
from tests.fixtures.settings import make_settings
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.throttle import FrozenThrottle
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import ANSWER_MARGIN, Database
from weflux.models import (
    AccountStatus,
    Contact,
    Message,
    MessageStatus,
    WhatsAppAccount,
    moves_forward,
    utcnow,
)
from weflux.realtime.broker import Message as Event
from weflux.runtime import Runtime, serving_database
from weflux.sandbox.cloud_api import FakeCloudApi, SentRecord
from weflux.services.channels import Services
from weflux.services.outbound import send_template_message
from weflux.worker import delivery
from weflux.worker.delivery import (
    HIGH_THROUGHPUT,
    STANDARD_THROUGHPUT,
    backoff_delay,
    claim_due_messages,
    deliver_due_messages,
    throughput_of,
)
from weflux.worker.suspects import SUSPECTS_PER_RUN

RETRYING = "could not record a delivery outcome; retrying"  # the worker's warning


def sends_of(fake: FakeCloudApi, message: Message) -> list[SentRecord]:
    """What the fake accepted for this message (matched by our callback data)."""
    return [s for s in fake.sent if s.payload.get("biz_opaque_callback_data") == str(message.id)]


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for `condition()` to become true."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110  (state that another task changes)
            await asyncio.sleep(0.01)


async def make_due(db: Database, message: Message) -> None:
    """Bring a retry or an expired lease forward instead of sleeping."""
    await update_message(db, message, next_attempt_at=utcnow() - timedelta(seconds=1))


# -- success -----------------------------------------------------------------------------


async def test_a_queued_reply_is_sent_and_its_wamid_stored(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
    events: list[Event],
) -> None:
    message = await queue_text(db, services, admin, scene, "Your order ships today")
    events.clear()

    assert await deliver_due_messages(db, services, inbox_settings) == 1

    stored = await load_message(db, message.id, admin.org_id)
    assert stored.status == MessageStatus.SENT
    assert stored.attempts == 1
    assert stored.next_attempt_at is None
    assert stored.status_updated_at is not None
    assert stored.error_code is None
    [sent] = fake_meta.sent
    assert stored.wa_message_id == sent.wa_message_id
    assert sent.phone_number_id == PHONE_NUMBER_ID
    assert sent.payload == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_WA_ID,
        "type": "text",
        "text": {"body": "Your order ships today"},
        "biz_opaque_callback_data": str(message.id),
    }
    # The token travels in the Authorization header and nowhere else.
    [request] = fake_meta.requests
    assert request.authorization == f"Bearer {ACCESS_TOKEN}"
    assert ACCESS_TOKEN not in request.body.decode()
    assert ACCESS_TOKEN not in request.path
    assert ACCESS_TOKEN not in json.dumps(request.query)
    update = {
        "event": "messageUpdated",
        "id": str(message.id),
        "conversation_id": str(scene.conversation.id),
    }
    assert events == [update, update]  # SENDING, then SENT

    assert await deliver_due_messages(db, services, inbox_settings) == 0
    assert len(fake_meta.sent) == 1


async def test_a_template_is_sent_with_its_stored_payload(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    account = await make_account(db, services.keyring, admin.org_id)
    closed = await make_conversation(db, account, last_inbound_at=None)
    async with db.session(admin.org_id) as session:
        message = await send_template_message(
            session,
            principal_of(admin),
            services.broker,
            conversation_id=closed.conversation.id,
            template_name="order_update",
            language_code="pt_BR",
            body_parameters=["Ana", "42"],
        )
    await deliver_due_messages(db, services, inbox_settings)
    [sent] = fake_meta.sent
    assert sent.payload["type"] == "template"
    assert sent.payload["to"] == closed.contact.wa_id
    assert sent.payload["template"] == message.payload
    assert sent.payload["biz_opaque_callback_data"] == str(message.id)
    assert (await load_message(db, message.id, admin.org_id)).status == MessageStatus.SENT


# -- retries and failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status"),
    [(131000, 500), (130429, 400), (131056, 400), (4, 400), (131016, 503)],
)
async def test_transient_errors_are_retried_with_backoff(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
    code: int,
    http_status: int,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.fail_next(code=code, http_status=http_status)
    before = utcnow()

    assert await deliver_due_messages(db, services, inbox_settings) == 1

    retried = await load_message(db, message.id, admin.org_id)
    assert retried.status == MessageStatus.QUEUED
    assert retried.attempts == 1
    assert retried.next_attempt_at is not None
    assert retried.next_attempt_at > before
    assert retried.next_attempt_at <= utcnow() + timedelta(seconds=2 * 2**1)
    assert retried.error_code == code
    assert retried.wa_message_id is None
    assert fake_meta.sent == []

    # Not due yet: nothing happens. (The drawn delay may be as short as 1 s, which a loaded
    # machine can spend before the next pass: the retry is put well ahead instead.)
    await update_message(db, message, next_attempt_at=utcnow() + timedelta(minutes=5))
    assert await deliver_due_messages(db, services, inbox_settings) == 0
    assert len(fake_meta.requests) == 1

    await make_due(db, message)
    assert await deliver_due_messages(db, services, inbox_settings) == 1
    delivered = await load_message(db, message.id, admin.org_id)
    assert delivered.status == MessageStatus.SENT
    assert delivered.attempts == 2
    assert delivered.error_code is None
    assert delivered.error_title is None
    assert len(sends_of(fake_meta, message)) == 1


async def test_a_cloud_api_without_a_json_body_is_retried(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.fail_next_raw(http_status=502)
    await deliver_due_messages(db, services, inbox_settings)
    assert (await load_message(db, message.id, admin.org_id)).status == MessageStatus.QUEUED


async def test_retries_end_failed_after_the_maximum_attempts(
    db: Database,
    services: Services,
    database_urls: DatabaseUrls,
    tmp_path: Path,
    meta_url: str,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        meta_graph_url=meta_url,
        delivery_max_attempts=3,
    )
    message = await queue_text(db, services, admin, scene)
    fake_meta.fail_next(3, code=131000, http_status=500)
    for attempt in (1, 2, 3):
        await make_due(db, message)
        assert await deliver_due_messages(db, services, settings) == 1
        row = await load_message(db, message.id, admin.org_id)
        assert row.attempts == attempt
    assert row.status == MessageStatus.FAILED
    assert row.error_code == 131000
    assert row.error_title is not None
    assert "gave up after 3 attempts" in row.error_title
    assert row.next_attempt_at is None
    await make_due(db, message)
    assert await deliver_due_messages(db, services, settings) == 0


@pytest.mark.parametrize(
    ("code", "title"),
    [
        (131026, "Message undeliverable"),
        (131047, "Re-engagement message"),
        (132000, "Template Param Count Mismatch"),
        (368, "Temporarily blocked for policies violations"),
    ],
)
async def test_permanent_errors_fail_with_metas_code_and_title(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
    events: list[Event],
    code: int,
    title: str,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.fail_next(code=code, http_status=400)
    events.clear()
    await deliver_due_messages(db, services, inbox_settings)
    failed = await load_message(db, message.id, admin.org_id)
    assert failed.status == MessageStatus.FAILED
    assert (failed.error_code, failed.error_title) == (code, title)
    assert failed.next_attempt_at is None
    assert failed.attempts == 1
    assert events[-1] == {
        "event": "messageUpdated",
        "id": str(message.id),
        "conversation_id": str(scene.conversation.id),
    }
    await make_due(db, message)
    assert await deliver_due_messages(db, services, inbox_settings) == 0
    assert len(fake_meta.requests) == 1


async def test_an_invalid_token_fails_the_message_and_flags_the_number(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    events: list[Event],
) -> None:
    account = await make_account(
        db, services.keyring, admin.org_id, token="EAAGrevokedTOKEN000000000000000001"
    )
    revoked = await make_conversation(db, account)
    first = await queue_text(db, services, admin, revoked, "first")

    await deliver_due_messages(db, services, inbox_settings)

    failed = await load_message(db, first.id, admin.org_id)
    assert failed.status == MessageStatus.FAILED
    assert failed.error_code == 190
    assert failed.error_title
    async with db.session(admin.org_id) as session:
        flagged = await session.get(WhatsAppAccount, account.id)
    assert flagged is not None
    assert flagged.status == AccountStatus.TOKEN_INVALID
    assert {"event": "whatsAppAccountUpdated", "id": str(account.id)} in events
    assert len(fake_meta.requests) == 1

    second = await queue_text(db, services, admin, revoked, "second")
    await deliver_due_messages(db, services, inbox_settings)
    fast = await load_message(db, second.id, admin.org_id)
    assert fast.status == MessageStatus.FAILED
    assert fast.error_code == 190
    assert "credentials" in (fast.error_title or "")
    assert len(fake_meta.requests) == 1  # no call to Meta for the second one


async def test_a_rotated_token_is_not_flagged_by_a_stale_rejection(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(0.5)
    fake_meta.fail_next(code=190, http_status=401)
    run = asyncio.create_task(deliver_due_messages(db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    async with db.session(admin.org_id) as session:  # an admin updates the credentials
        account = await session.get(WhatsAppAccount, scene.account.id)
        assert account is not None
        account.credentials_updated_at = utcnow()
    await run
    assert (await load_message(db, message.id, admin.org_id)).error_code == 190
    async with db.session(admin.org_id) as session:
        account = await session.get(WhatsAppAccount, scene.account.id)
    assert account is not None
    assert account.status == AccountStatus.CONNECTED


async def test_undeliverable_messages_fail_without_calling_meta(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:

    account = await make_account(db, services.keyring, admin.org_id)
    no_token = await make_account(
        db, services.keyring, admin.org_id, phone_number_id=OTHER_PHONE_NUMBER_ID, token=None
    )
    opted_out_later = await make_conversation(db, account)
    tokenless = await make_conversation(db, no_token)
    nobody = await make_conversation(db, account)
    disconnected_later = await make_conversation(db, account)

    messages = {
        "opted out": await queue_text(db, services, admin, opted_out_later),
        "no access token": await queue_text(db, services, admin, tokenless),
        "no WhatsApp number": await queue_text(db, services, admin, nobody),
    }
    async with db.session(admin.org_id) as session:
        contact = await session.get(Contact, opted_out_later.contact.id)
        assert contact is not None
        contact.opted_out = True
        contact = await session.get(Contact, nobody.contact.id)
        assert contact is not None
        contact.wa_id = None
    assert await deliver_due_messages(db, services, inbox_settings) == 3
    for reason, message in messages.items():
        row = await load_message(db, message.id, admin.org_id)
        assert row.status == MessageStatus.FAILED, reason
        assert reason in (row.error_title or ""), row.error_title
    assert fake_meta.requests == []

    last = await queue_text(db, services, admin, disconnected_later)
    async with db.session(admin.org_id) as session:
        number = await session.get(WhatsAppAccount, account.id)
        assert number is not None
        number.disconnected_at = utcnow()
        number.status = AccountStatus.DISCONNECTED
        number.access_token_enc = None
    await deliver_due_messages(db, services, inbox_settings)
    row_message = await load_message(db, last.id, admin.org_id)
    assert row_message.status == MessageStatus.FAILED
    assert "disconnected" in (row_message.error_title or "")
    assert fake_meta.requests == []


# -- crashes, concurrency, ordering --------------------------------------------------------


async def test_a_worker_killed_mid_send_is_taken_over_after_its_lease(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(30)
    worker = asyncio.create_task(deliver_due_messages(db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    worker.cancel()  # the process dies while Meta holds the call
    with pytest.raises(asyncio.CancelledError):
        await worker

    abandoned = await load_message(db, message.id, admin.org_id)
    assert abandoned.status == MessageStatus.SENDING
    assert abandoned.attempts == 1
    assert abandoned.next_attempt_at is not None
    assert abandoned.next_attempt_at > utcnow() + timedelta(seconds=30)  # the lease
    assert await deliver_due_messages(db, services, inbox_settings) == 0  # lease still held
    await until(lambda: fake_meta.requests[0].status is not None)  # the fake finished
    sent_before = len(sends_of(fake_meta, message))

    await make_due(db, message)  # the lease runs out
    assert await deliver_due_messages(db, services, inbox_settings) == 1

    done = await load_message(db, message.id, admin.org_id)
    assert done.status == MessageStatus.SENT
    assert done.attempts == 2
    sends = sends_of(fake_meta, message)
    assert len(sends) == sent_before + 1
    assert done.wa_message_id == sends[-1].wa_message_id
    assert await deliver_due_messages(db, services, inbox_settings) == 0


async def test_a_claim_that_is_never_finished_is_claimed_again(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    [claimed] = await claim_due_messages(db, services, inbox_settings)
    assert claimed.id == message.id
    assert await claim_due_messages(db, services, inbox_settings) == []

    await make_due(db, message)
    assert await deliver_due_messages(db, services, inbox_settings) == 1
    done = await load_message(db, message.id, admin.org_id)
    assert (done.status, done.attempts) == (MessageStatus.SENT, 2)
    assert len(sends_of(fake_meta, message)) == 1


async def test_an_expired_lease_whose_wamid_a_webhook_filled_in_is_not_resent(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    await claim_due_messages(db, services, inbox_settings)
    await update_message(db, message, wa_message_id="wamid.FROMWEBHOOK", next_attempt_at=utcnow())
    assert await deliver_due_messages(db, services, inbox_settings) == 0
    row = await load_message(db, message.id, admin.org_id)
    assert row.status == MessageStatus.SENT
    assert fake_meta.requests == []


async def test_a_lease_that_keeps_expiring_ends_failed(
    db: Database,
    services: Services,
    database_urls: DatabaseUrls,
    tmp_path: Path,
    meta_url: str,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    settings = make_settings(
        tmp_path, database_url=database_urls.app, meta_graph_url=meta_url, delivery_max_attempts=2
    )
    message = await queue_text(db, services, admin, scene)
    for attempt in range(2):  # then claimed again alone, as a suspect (its worker died)
        assert len(await claim_due_messages(db, services, settings, suspect=attempt > 0)) == 1
        await make_due(db, message)
    assert await claim_due_messages(db, services, settings) == []  # left to a suspect's claim
    assert await claim_due_messages(db, services, settings, suspect=True) == []
    row = await load_message(db, message.id, admin.org_id)
    assert row.status == MessageStatus.FAILED
    assert "abandoned after 2 attempts" in (row.error_title or "")


async def test_concurrent_workers_send_every_message_exactly_once(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    account = await make_account(db, services.keyring, admin.org_id)
    scenes = [await make_conversation(db, account) for _ in range(5)]
    queued = [
        await queue_text(db, services, admin, scenes[i % 5], f"message {i}") for i in range(20)
    ]
    fake_meta.delay_next(0.05, count=20)

    async def worker() -> int:
        total = 0
        while claimed := await deliver_due_messages(db, services, inbox_settings, batch_size=3):
            total += claimed
        return total

    counts = await asyncio.gather(worker(), worker(), worker())

    assert sum(counts) == 20
    assert len(fake_meta.sent) == 20
    callbacks = [s.payload["biz_opaque_callback_data"] for s in fake_meta.sent]
    assert sorted(callbacks) == sorted(str(m.id) for m in queued)
    for message in queued:
        row = await load_message(db, message.id, admin.org_id)
        assert (row.status, row.attempts) == (MessageStatus.SENT, 1)
    # Within a conversation, messages went out in the order they were queued.
    for each in scenes:
        texts = [s.payload["text"]["body"] for s in fake_meta.sent if s.to == each.contact.wa_id]
        assert texts == sorted(texts, key=lambda t: int(t.split()[1]))


async def test_a_late_send_response_never_moves_a_status_backwards(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(0.5)
    run = asyncio.create_task(deliver_due_messages(db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    # A `delivered` status webhook (matched by the callback data) beats the send response.
    async with db.session(admin.org_id) as session:
        row = await session.get(Message, message.id)
        assert row is not None
        assert moves_forward(row.status, MessageStatus.DELIVERED)
        row.status = MessageStatus.DELIVERED
        row.status_updated_at = utcnow()
    await run
    final = await load_message(db, message.id, admin.org_id)
    assert final.status == MessageStatus.DELIVERED
    assert final.wa_message_id == fake_meta.sent[0].wa_message_id
    assert final.next_attempt_at is None


async def test_a_late_failure_never_overrides_a_webhook_status(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(0.5)
    fake_meta.fail_next(code=131000, http_status=500)
    run = asyncio.create_task(deliver_due_messages(db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    await update_message(db, message, status=MessageStatus.READ, wa_message_id="wamid.X")
    await run
    final = await load_message(db, message.id, admin.org_id)
    assert final.status == MessageStatus.READ


# -- the database going away ------------------------------------------------------------------


@pytest.fixture
async def proxied_db(database_urls: DatabaseUrls) -> AsyncIterator[tuple[Database, TcpProxy]]:
    """The worker's database handle, through a TCP proxy the test can cut."""
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    database = Database(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        connect_timeout=2.0,
    )
    yield database, proxy
    await database.dispose()
    await proxy.close()


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_database_blip_while_sending_is_ridden_out(
    db: Database,
    proxied_db: tuple[Database, TcpProxy],
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="weflux.worker.delivery")
    worker_db, proxy = proxied_db
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(0.3)
    run = asyncio.create_task(deliver_due_messages(worker_db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    await proxy.cut()
    await until(lambda: fake_meta.requests[0].status is not None)
    # the worker fails to record the outcome at least once
    await until(lambda: any(RETRYING in record.getMessage() for record in caplog.records))
    await proxy.restore()
    assert await run == 1

    done = await load_message(db, message.id, admin.org_id)
    assert done.status == MessageStatus.SENT
    assert done.wa_message_id == fake_meta.sent[0].wa_message_id
    assert len(sends_of(fake_meta, message)) == 1


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_database_outage_while_sending_never_leaves_a_message_stuck(
    db: Database,
    proxied_db: tuple[Database, TcpProxy],
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "STORE_RETRY_DELAYS", (0.05, 0.05))
    worker_db, proxy = proxied_db
    message = await queue_text(db, services, admin, scene)
    fake_meta.delay_next(0.3)
    run = asyncio.create_task(deliver_due_messages(worker_db, services, inbox_settings))
    await until(lambda: len(fake_meta.requests) == 1)
    await proxy.cut()
    assert await run == 1  # the outcome could not be stored; the run survives

    lost = await load_message(db, message.id, admin.org_id)
    assert lost.status == MessageStatus.SENDING  # Meta has it; we do not know yet
    with pytest.raises(Exception):  # noqa: B017  (whatever the driver raises)
        await deliver_due_messages(worker_db, services, inbox_settings)

    await proxy.restore()
    assert await deliver_due_messages(worker_db, services, inbox_settings) == 0  # leased
    await make_due(db, message)  # the lease expires
    assert await deliver_due_messages(worker_db, services, inbox_settings) == 1

    done = await load_message(db, message.id, admin.org_id)
    assert done.status == MessageStatus.SENT
    assert done.attempts == 2
    # At least once: the send whose answer was lost went out, and the retry too.
    sends = sends_of(fake_meta, message)
    assert len(sends) == 2
    assert done.wa_message_id == sends[-1].wa_message_id


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_a_database_that_stops_answering_fails_a_run_in_time_and_nothing_is_stuck(
    db: Database,
    database_urls: DatabaseUrls,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    """Given the worker's database handle as `weflux worker` builds it, its PostgreSQL
    behind a proxy that goes silent without a reset (a partition), when a delivery run
    starts, then it fails within the statement timeout and its margin (it waited for TCP
    to give up, minutes); once the server answers again the next run sends the message,
    once."""
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    statement_timeout = timedelta(seconds=1)
    worker_db = serving_database(
        inbox_settings.model_copy(
            update={
                "database_url": proxied,
                "database_statement_timeout": statement_timeout,
                "database_connect_timeout": 1.0,
            }
        )
    )
    try:
        message = await queue_text(db, services, admin, scene)
        async with worker_db.engine.connect():  # one pooled connection, just used
            pass
        await proxy.partition()
        async with asyncio.timeout(3 * (statement_timeout + ANSWER_MARGIN).total_seconds()):
            with pytest.raises(Exception):  # noqa: B017  (whatever the driver raises)
                await deliver_due_messages(worker_db, services, inbox_settings)

        await proxy.restore()
        assert await deliver_due_messages(worker_db, services, inbox_settings) == 1
        done = await load_message(db, message.id, admin.org_id)
        assert done.status == MessageStatus.SENT
        assert len(sends_of(fake_meta, message)) == 1
    finally:
        await worker_db.dispose()
        await proxy.close()


# -- throughput, payloads, backoff --------------------------------------------------------


def test_throughput_follows_the_numbers_level() -> None:
    account = WhatsAppAccount(
        display_phone_number="+1",
        phone_number_id="1",
        business_account_id="2",
        webhook_key="k",
        credentials_updated_at=utcnow(),
    )
    assert throughput_of(account) == STANDARD_THROUGHPUT
    account.throughput_level = "HIGH"
    assert throughput_of(account) == HIGH_THROUGHPUT
    account.throughput_level = "STANDARD"
    assert throughput_of(account) == STANDARD_THROUGHPUT


async def test_the_throttle_paces_sends(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "STANDARD_THROUGHPUT", 5)
    account = await make_account(db, services.keyring, admin.org_id)
    scenes = [await make_conversation(db, account) for _ in range(8)]
    for each in scenes:
        await queue_text(db, services, admin, each)
    throttle = FrozenThrottle()
    await deliver_due_messages(db, services, inbox_settings, throttle=throttle)
    assert len(fake_meta.sent) == 8
    # 5 at once, then 3 more at 5 a second: each waits its turn
    assert sorted(throttle.waits) == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.4, 0.6])
    assert max(throttle.waits) >= 0.5


def test_backoff_is_exponential_with_full_jitter(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    for attempts in range(1, 15):
        ceiling = min(600.0, 2.0 * 2**attempts)
        delays = [backoff_delay(attempts, settings) for _ in range(50)]
        assert all(1.0 <= d <= ceiling for d in delays)
    assert max(backoff_delay(40, settings) for _ in range(200)) > 300  # jitter spreads wide


def test_the_lease_must_outlast_a_cloud_api_call(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="at least 50 seconds"):
        make_settings(tmp_path, delivery_lease="10s")
    assert make_settings(tmp_path, delivery_lease="2m").delivery_lease == timedelta(minutes=2)


# -- the worker process -------------------------------------------------------------------


def test_the_worker_runs_delivery_every_half_second(tmp_path: Path) -> None:
    runtime = Runtime.build(make_settings(tmp_path))
    jobs = {job.name: job for job in runtime.build_worker().jobs}
    assert jobs["delivery"].every == 0.5


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_in_process_worker_delivers_queued_messages(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:

    message = await queue_text(db, services, admin, scene)
    app = create_app(inbox_settings.model_copy(update={"in_process_worker": True}))
    async with lifespan(app):
        for _ in range(200):
            if (await load_message(db, message.id, admin.org_id)).status == MessageStatus.SENT:
                break
            await asyncio.sleep(0.05)
    assert (await load_message(db, message.id, admin.org_id)).status == MessageStatus.SENT
    assert len(sends_of(fake_meta, message)) == 1


# -- a worker that dies -------------------------------------------------------------------


async def a_lease_passes(db: Database, org_id: uuid.UUID, settings: Settings) -> None:
    """Time passes by one lease for every message in flight (their worker is gone)."""
    async with db.session(org_id) as session:
        statement = select(Message).where(col(Message.status) == MessageStatus.SENDING)
        for row in (await session.exec(statement)).all():
            assert row.next_attempt_at is not None
            row.next_attempt_at -= settings.delivery_lease + timedelta(seconds=1)


async def test_messages_whose_worker_died_are_sent_alone_after_the_batch(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given two messages whose worker died holding them, and two fresh ones,
    when a worker runs, then the fresh ones go together, and each suspect alone after."""
    account = await make_account(db, services.keyring, admin.org_id)
    scenes = [await make_conversation(db, account) for _ in range(4)]
    first, second = [await queue_text(db, services, admin, scenes[i]) for i in range(2)]
    assert len(await claim_due_messages(db, services, inbox_settings)) == 2
    await a_lease_passes(db, admin.org_id, inbox_settings)
    fresh = [await queue_text(db, services, admin, scenes[i]) for i in range(2, 4)]
    process = WorkerProcess(monkeypatch, delivery, "deliver_one")

    assert await deliver_due_messages(db, services, inbox_settings) == 4

    assert process.alongside == {
        fresh[0].id: {fresh[1].id},
        fresh[1].id: {fresh[0].id},
        first.id: set(),
        second.id: set(),
    }
    for message in (first, second, *fresh):
        row = await load_message(db, message.id, admin.org_id)
        assert row.status == MessageStatus.SENT
        assert len(sends_of(fake_meta, message)) == 1


CRASHED = 60  # more than a batch (50)


async def crashed(
    db: Database, services: Services, actor: Actor, settings: Settings, account: WhatsAppAccount
) -> list[tuple[Scene, Message]]:
    """`CRASHED` messages, each in a conversation of its own, that a worker held when it
    died (SENDING, their lease run out: due before anything queued now), oldest first."""
    scenes = [await make_conversation(db, account) for _ in range(CRASHED)]
    held = [(scene, await queue_text(db, services, actor, scene)) for scene in scenes]
    assert len(await claim_due_messages(db, services, settings, batch_size=CRASHED)) == CRASHED
    await a_lease_passes(db, actor.org_id, settings)
    return held


async def until_nothing_is_due(db: Database, services: Services, settings: Settings) -> None:
    """Worker runs until one claims nothing (a few: `SUSPECTS_PER_RUN` suspects each)."""
    for _ in range(CRASHED):
        if await deliver_due_messages(db, services, settings) == 0:
            return
    raise AssertionError("messages still due")


async def test_after_a_crash_a_new_message_does_not_wait_behind_the_suspects(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given 60 messages a crashed worker held (more than a batch, each due before
    anything new) and then a new message,
    when a worker runs once, then it sends the new message, then `SUSPECTS_PER_RUN`
    suspects, each alone (the others are left to the next runs)."""
    account = await make_account(db, services.keyring, admin.org_id)
    suspects = [
        message for _, message in await crashed(db, services, admin, inbox_settings, account)
    ]
    new = await queue_text(db, services, admin, await make_conversation(db, account))
    process = WorkerProcess(monkeypatch, delivery, "deliver_one")

    assert await deliver_due_messages(db, services, inbox_settings) == 1 + SUSPECTS_PER_RUN

    assert (await load_message(db, new.id, admin.org_id)).status == MessageStatus.SENT
    first, *alone = process.alongside
    assert first == new.id
    assert set(alone) <= {m.id for m in suspects}
    assert len(alone) == SUSPECTS_PER_RUN
    assert all(others == set() for others in process.alongside.values())
    assert len(sends_of(fake_meta, new)) == 1


async def test_after_a_crash_a_message_behind_a_suspect_still_waits_for_it(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    """Given 60 messages a crashed worker held, the last due of them in conversation C,
    then a new message in C and one in another conversation,
    when a worker runs once, then the other one is sent and C's new one is not (its
    suspect is not among the run's first `SUSPECTS_PER_RUN`); when workers run until
    nothing is due, C's suspect is sent before the message behind it."""
    account = await make_account(db, services.keyring, admin.org_id)
    *_, (conversation, ahead) = await crashed(db, services, admin, inbox_settings, account)
    await update_message(db, ahead, next_attempt_at=utcnow() - timedelta(seconds=1))
    behind = await queue_text(db, services, admin, conversation)
    other = await queue_text(db, services, admin, await make_conversation(db, account))

    assert await deliver_due_messages(db, services, inbox_settings) == 1 + SUSPECTS_PER_RUN

    assert (await load_message(db, other.id, admin.org_id)).status == MessageStatus.SENT
    assert (await load_message(db, ahead.id, admin.org_id)).status == MessageStatus.SENDING
    waiting = await load_message(db, behind.id, admin.org_id)
    assert (waiting.status, waiting.attempts) == (MessageStatus.QUEUED, 0)

    await until_nothing_is_due(db, services, inbox_settings)
    [ahead_sent] = sends_of(fake_meta, ahead)
    [behind_sent] = sends_of(fake_meta, behind)
    assert fake_meta.sent.index(ahead_sent) < fake_meta.sent.index(behind_sent)


async def test_a_message_that_kills_its_worker_takes_no_other_message_to_its_end(
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a message whose send kills the worker, claimed in one batch with two others,
    when workers come back after each death, then it alone is abandoned, at its last
    attempt; the two others are sent on their second."""
    account = await make_account(db, services.keyring, admin.org_id)
    scenes = [await make_conversation(db, account) for _ in range(3)]
    poison, *others = [await queue_text(db, services, admin, scene) for scene in scenes]
    process = WorkerProcess(monkeypatch, delivery, "deliver_one", poison=poison.id)
    with pytest.raises(Died):  # the three were in flight together
        await deliver_due_messages(db, services, inbox_settings)
    assert process.alongside[poison.id] == {m.id for m in others}

    for _ in range(inbox_settings.delivery_max_attempts + 1):
        await a_lease_passes(db, admin.org_id, inbox_settings)
        process.dead = False  # a worker starts again
        with contextlib.suppress(Died):
            await deliver_due_messages(db, services, inbox_settings)

    dead = await load_message(db, poison.id, admin.org_id)
    assert dead.status == MessageStatus.FAILED
    assert dead.attempts == inbox_settings.delivery_max_attempts
    assert "abandoned" in (dead.error_title or "")
    for message in others:
        row = await load_message(db, message.id, admin.org_id)
        assert (row.status, row.attempts) == (MessageStatus.SENT, 2)
        assert len(sends_of(fake_meta, message)) == 1
