"""A webhook whose PostgreSQL connection is killed while it is processed in the request:
stored before the 200 all the same, processed by the worker's sweep, and Meta's retry of
it adds nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls, killed_while_waiting, owner_sql, postgres_only
from tests.fixtures.live import SECRET
from weflux.config import Settings
from weflux.db import Database
from weflux.models import WhatsAppAccount
from weflux.runtime import runtime_of
from weflux.services import webhook_queue

pytestmark = [postgres_only, pytest.mark.usefixtures("channel")]

TEXT = "written while the connection died"


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """The platform's webhooks signed with SECRET."""
    return live_settings


async def _rows(owner_db: Database, sql: str) -> list[Any]:
    async with owner_db.engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def test_a_webhook_whose_connection_is_killed_while_processed_loses_nothing(
    app: Starlette,
    client: httpx.AsyncClient,
    owner_db: Database,
    database_urls: DatabaseUrls,
    channel: WhatsAppAccount,
) -> None:
    """Given a customer's message whose processing waits on the contacts table (locked by
    another writer), when its backend is killed mid-transaction, then Meta is answered 200
    only because the event was stored (FAILED, the driver's class and SQLSTATE, no text);
    the sweep processes it; and Meta's retry of the same body stores the message no
    second time."""
    raw = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(body=TEXT, from_wa_id="15550001111")],
                contacts=[wh.contact(wa_id="15550001111", name="Killed")],
            )
        )
    )
    headers = {"X-Hub-Signature-256": wh.sign(raw, SECRET), "Content-Type": "application/json"}

    async def post() -> httpx.Response:
        return await client.post("/webhooks/whatsapp", content=raw, headers=headers)

    answer = await killed_while_waiting(
        database_urls, owner_db, "LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE", post
    )

    assert answer.status_code == 200
    (event,) = await _rows(owner_db, "SELECT status, attempts, last_error FROM webhook_events")
    assert (event.status, event.attempts) == ("FAILED", 1)
    assert event.last_error.startswith("DBAPIError (ConnectionDoesNotExistError 08003)")
    assert await _rows(owner_db, "SELECT text FROM messages") == []

    await owner_sql(database_urls, "UPDATE webhook_events SET next_attempt_at = now()")  # due
    runtime = runtime_of(app)
    swept = await webhook_queue.retry_due_events(
        runtime.db, runtime.broker, runtime.settings, settle=timedelta(0)
    )
    assert swept == 1
    assert await _rows(owner_db, "SELECT text FROM messages") == [(TEXT,)]

    assert (await post()).status_code == 200  # Meta's retry
    assert await _rows(owner_db, "SELECT text FROM messages") == [(TEXT,)]
