"""Webhooks under load: answered once stored, processed from a bounded queue, nothing lost.

While the process has room a webhook is stored and processed in one transaction before
its 200; beyond that it is only stored, and queued; what the full queue refuses waits
in `webhook_events` for the worker's sweep (weflux.services.webhook_queue).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from tests.fixtures import webhooks as wh
from tests.fixtures.live import signed_webhook
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Message,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
)
from weflux.runtime import runtime_of
from weflux.services import webhook_queue


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """The app's settings: the platform's webhooks signed as `signed_webhook` signs them."""
    return live_settings


async def post(client: httpx.AsyncClient, sender: str) -> int:
    change = wh.messages_change(
        messages=[wh.text_message(from_wa_id=sender, body="hi")],
        contacts=[wh.contact(wa_id=sender)],
    )
    return (await signed_webhook(client, wh.webhook_body(change))).status_code


async def messages(db: Database, org_id: Any) -> int:
    async with db.session(org_id) as session:
        return int((await session.exec(select(func.count(col(Message.id))))).one())


async def events(owner_db: Database, status: WebhookEventStatus) -> int:
    async with owner_db.session(all_workspaces="test: count events") as session:
        query = select(func.count(col(WebhookEvent.id))).where(WebhookEvent.status == status)
        return int((await session.exec(query)).one())


async def test_a_webhook_with_room_is_stored_processed(
    app: Any, client: httpx.AsyncClient, channel: WhatsAppAccount, db: Database, owner_db: Database
) -> None:
    """Given an idle process,
    when a webhook comes,
    then by its 200 it is stored already processed, its message written."""
    assert await post(client, "16505551000") == 200
    assert await events(owner_db, WebhookEventStatus.PROCESSED) == 1
    assert await messages(db, channel.org_id) == 1


async def test_an_overflowing_queue_loses_nothing(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
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
    assert await messages(db, channel.org_id) == 0

    intake.start()
    await intake.drain()
    assert await messages(db, channel.org_id) == 1

    swept = await webhook_queue.retry_due_events(
        runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
    )
    assert swept == 2
    assert await messages(db, channel.org_id) == 3
    assert await events(owner_db, WebhookEventStatus.PROCESSED) == 3
    assert (
        await webhook_queue.retry_due_events(
            runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
        )
        == 0
    )


async def test_on_sqlite_a_webhook_waits_for_a_slot_rather_than_being_stored_alone(
    app: Any,
    client: httpx.AsyncClient,
    channel: WhatsAppAccount,
    db: Database,
    owner_db: Database,
    dialect: str,
) -> None:
    """Given a process whose slots to process in requests are all taken, one given back
    soon after,
    when a webhook comes,
    then on SQLite it waits for that slot and is stored already processed by its 200 (one
    writer holds SQLite's lock at a time: storing it alone first would only add a second
    unit of work); on PostgreSQL it is stored alone and queued, as before."""
    intake = runtime_of(app).webhook_intake
    await intake.stop()  # what is queued stays queued
    intake.inline_free = 0
    asyncio.get_running_loop().call_later(0.05, intake.release_inline)
    assert await post(client, "16505553000") == 200
    if dialect == "sqlite":
        assert await events(owner_db, WebhookEventStatus.PROCESSED) == 1
        assert await messages(db, channel.org_id) == 1
        assert intake.queue.qsize() == 0
    else:
        assert await events(owner_db, WebhookEventStatus.PENDING) == 1
        assert intake.queue.qsize() == 1
    await asyncio.sleep(0.1)
    intake.start()
    await intake.drain()
    assert await messages(db, channel.org_id) == 1


async def test_waiting_for_a_slot_in_turn_and_no_longer_than_allowed() -> None:
    """The line for a slot: first come, first served; a request that waited its limit is
    stored alone; a slot handed to a request that stopped waiting goes to the next."""
    intake = webhook_queue.WebhookIntake(
        None,  # type: ignore[arg-type]  # (neither the database nor the broker is used)
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        inline=1,
        inline_wait=0.5,
    )
    assert await intake.claim_inline()
    order: list[int] = []

    async def claim(k: int) -> bool:
        claimed = await intake.claim_inline()
        if claimed:
            order.append(k)
        return claimed

    waiting = [asyncio.create_task(claim(k)) for k in range(3)]
    await asyncio.sleep(0.01)
    waiting[1].cancel()  # a request gone (its client hung up) leaves the line
    intake.release_inline()  # the first holder's slot goes to the first in line
    await asyncio.sleep(0.01)
    assert order == [0]
    intake.release_inline()  # and that one's to the next still waiting
    await asyncio.sleep(0.01)
    assert order == [0, 2]
    # A request that waits its limit is refused (then stored alone)
    assert not await intake.claim_inline()
    intake.release_inline()  # the last holder's: free again
    assert intake.inline_free == 1
    # No wait allowed (PostgreSQL): refused at once
    intake.inline_wait = 0
    assert await intake.claim_inline()
    assert not await intake.claim_inline()
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
