"""The one-message webhook's SQL statements, pinned (issue 11: at most 6 for a new sender).

Counted with SQLAlchemy's `before_cursor_execute` on the app's engine, from the POST to
the end of its processing; transaction control (BEGIN, COMMIT) is not a statement.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Conversation, Message, Organization, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of

SECRET = "statements-app-secret-0123456789"


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
            webhook_key="statements-key-00000000000000001",
            status="CONNECTED",
            credentials_updated_at=utcnow(),
        )
        session.add(account)
    return account


def _is_statement(sql: str) -> bool:
    return sql.strip().split(None, 1)[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}


async def _statements(client: httpx.AsyncClient, app: Any, sender: str) -> list[str]:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(from_wa_id=sender, body="hi")],
                contacts=[wh.contact(wa_id=sender, name="Customer")],
            )
        )
    )
    engine = runtime_of(app).db.engine.sync_engine
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _is_statement(statement):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        response = await client.post(
            "/webhooks/whatsapp",
            content=body,
            headers={"X-Hub-Signature-256": wh.sign(body, SECRET)},
        )
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert response.status_code == 200
    if os.environ.get("SHOW_STATEMENTS"):
        print("\n---", sender, len(seen), "\n" + "\n".join(s[:160] for s in seen))
    return seen


async def test_a_one_message_webhook_runs_few_statements(
    client: httpx.AsyncClient, app: Any, number: WhatsAppAccount, dialect: str
) -> None:
    """Given a connected number,
    when a one-message webhook comes from a new sender, then another from that sender,
    then the first runs 6 statements and the second one fewer."""
    await _statements(client, app, "16505550000")  # the number's routes, now cached
    new = await _statements(client, app, "16505550001")
    known = await _statements(client, app, "16505550001")
    # PostgreSQL adds the scope's one set_config (the routes are cached: the workspace
    # is known when the transaction begins); SQLite the change feed's one SELECT of the
    # workspace's highest position (PostgreSQL takes it in a trigger: docs/realtime.md).
    expected = {"sqlite": (6, 5), "postgresql": (6, 5)}[dialect]
    assert (len(new), len(known)) == expected


async def test_a_redelivered_message_is_still_a_no_op(
    client: httpx.AsyncClient, app: Any, number: WhatsAppAccount, db: Database, dialect: str
) -> None:
    """Given a message stored already (its wamid is not asked for before the insert),
    when Meta delivers the same webhook again,
    then it is answered 200, the message is stored once and its conversation unchanged."""
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(from_wa_id="16505550009", body="once")],
                contacts=[wh.contact(wa_id="16505550009")],
            )
        )
    )
    headers = {"X-Hub-Signature-256": wh.sign(body, SECRET)}
    for _ in range(2):
        response = await client.post("/webhooks/whatsapp", content=body, headers=headers)
        assert response.status_code == 200
    async with db.session(number.org_id) as session:
        assert len((await session.exec(select(Message))).all()) == 1
        (conversation,) = (await session.exec(select(Conversation))).all()
    assert conversation.unread_count == 1
