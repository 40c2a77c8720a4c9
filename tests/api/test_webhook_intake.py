"""Webhooks under load: answered once stored, processed from a bounded queue, nothing lost.

While the process has room a webhook is stored and processed in one transaction before
its 200; beyond that it is only stored, and queued; what the full queue refuses waits
in `webhook_events` for the worker's sweep (weflux.services.webhook_queue).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Message,
    Organization,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.runtime import runtime_of
from weflux.services import webhook_queue

SECRET = "intake-app-secret-0123456789"


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
    )


@pytest.fixture
async def number(db: Database, org: Organization) -> WhatsAppAccount:
    async with db.session(org.id) as session:
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=wh.PHONE_NUMBER_ID,
            business_account_id=wh.WABA_ID,
            webhook_key="intake-key-000000000000000000001",
            credentials_updated_at=utcnow(),
            status="CONNECTED",
        )
        session.add(account)
    return account


async def post(client: httpx.AsyncClient, sender: str) -> int:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(from_wa_id=sender, body="hi")],
                contacts=[wh.contact(wa_id=sender)],
            )
        )
    )
    headers = {"X-Hub-Signature-256": wh.sign(body, SECRET)}
    return (await client.post("/webhooks/whatsapp", content=body, headers=headers)).status_code


async def messages(db: Database, org_id: Any) -> int:
    async with db.session(org_id) as session:
        return int((await session.exec(select(func.count(col(Message.id))))).one())


async def events(owner_db: Database, status: WebhookEventStatus) -> int:
    async with owner_db.session(all_workspaces="test: count events") as session:
        query = select(func.count(col(WebhookEvent.id))).where(WebhookEvent.status == status)
        return int((await session.exec(query)).one())


async def test_a_webhook_with_room_is_stored_processed(
    app: Any, client: httpx.AsyncClient, number: WhatsAppAccount, db: Database, owner_db: Database
) -> None:
    """Given an idle process,
    when a webhook comes,
    then by its 200 it is stored already processed, its message written."""
    assert await post(client, "16505551000") == 200
    assert await events(owner_db, WebhookEventStatus.PROCESSED) == 1
    assert await messages(db, number.org_id) == 1


async def test_an_overflowing_queue_loses_nothing(
    app: Any,
    client: httpx.AsyncClient,
    number: WhatsAppAccount,
    db: Database,
    owner_db: Database,
    dialect: str,
) -> None:
    """Given a process with no room to process in requests, a queue of one, its queue
    workers stopped (a busy or a killed process),
    when three webhooks come,
    then each is answered 200 once stored; the queued one is processed by the queue, and
    the two the full queue refused by the worker's sweep: three messages, none twice."""
    runtime = runtime_of(app)
    intake = runtime.webhook_intake
    await intake.stop()
    intake.inline_free = 0
    intake.queue = asyncio.Queue(maxsize=1)
    for k in range(3):
        assert await post(client, f"1650555200{k}") == 200
    assert intake.queue.qsize() == 1
    assert await events(owner_db, WebhookEventStatus.PENDING) == 3
    assert await messages(db, number.org_id) == 0

    intake.start()
    await intake.drain()
    assert await messages(db, number.org_id) == 1

    swept = await webhook_queue.retry_due_events(
        runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
    )
    assert swept == 2
    assert await messages(db, number.org_id) == 3
    assert await events(owner_db, WebhookEventStatus.PROCESSED) == 3
    assert (
        await webhook_queue.retry_due_events(
            runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
        )
        == 0
    )
