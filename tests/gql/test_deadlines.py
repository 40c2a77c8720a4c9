"""Deadlines: an operation past `WEFLUX_GRAPHQL_TIMEOUT` is cancelled, rolled back, `TIMEOUT`.

The slow part is a real statement that never ends by itself (a recursive CTE without a
bound on SQLite, `pg_sleep` on PostgreSQL), run by a service after it has written.
`asyncio.timeout` around a request only keeps a broken build from hanging the run.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import app_client, lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.inbox import EndlessStatusChange, status_of
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Conversation, ConversationStatus
from weflux.runtime import runtime_of
from weflux.services import conversations as conversation_service

SET_STATUS = """mutation($id: ID!, $status: ConversationStatus!) {
  updateConversationStatus(input: {conversationId: $id, status: $status}) { status } }"""
LIST = "{ conversations(first: 10) { edges { node { id status } } } }"
HANG_GUARD = 60  # seconds; far above every deadline here


def variables(conversation: Conversation, status: str) -> dict[str, Any]:
    return {"id": encode_global_id("Conversation", conversation.id), "status": status}


async def test_an_operation_past_its_deadline_is_cancelled_and_rolled_back(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    admin: Actor,
    db: Database,
    conversation: Conversation,
    endless_status_change: EndlessStatusChange,
) -> None:
    # Given a status change that, once written, runs a statement that never ends
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        graphql_timeout=1,
    )
    async with app_client(settings) as client:
        token = await token_for(client, admin)
        # When it is sent
        async with asyncio.timeout(HANG_GUARD):
            response = await gql(client, token, SET_STATUS, variables(conversation, "RESOLVED"))
        # Then it is answered TIMEOUT at its deadline, with its cost
        assert response.status_code == 200
        assert response.json()["data"] is None
        assert error_codes(response) == ["TIMEOUT"]
        assert response.json()["extensions"]["cost"]["requested"] == 10
        # And nothing of it was kept
        assert await status_of(db, conversation) is ConversationStatus.OPEN
        # And the database is free: the same change, without the endless statement, passes
        endless_status_change.end()
        # (the deadline under test is past: a loaded machine may take over 1 s for the
        # next operation, which would then time out too)
        settings.graphql_timeout = timedelta(seconds=30)
        async with asyncio.timeout(HANG_GUARD):
            again = await gql(client, token, SET_STATUS, variables(conversation, "RESOLVED"))
        assert again.json()["data"] == {"updateConversationStatus": {"status": "RESOLVED"}}
        assert await status_of(db, conversation) is ConversationStatus.RESOLVED


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_long_read_never_blocks_a_write_on_sqlite(
    client: httpx.AsyncClient,
    admin: Actor,
    manager: Actor,
    db: Database,
    conversation: Conversation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a query that has read, and holds its transaction open until told to finish
    reading, finish = asyncio.Event(), asyncio.Event()
    real = conversation_service.list_conversations

    async def held(*args: Any, **kwargs: Any) -> Any:
        page = await real(*args, **kwargs)
        reading.set()
        await finish.wait()
        return page

    monkeypatch.setattr(conversation_service, "list_conversations", held)
    admin_token, manager_token = await token_for(client, admin), await token_for(client, manager)
    read = asyncio.create_task(gql(client, admin_token, LIST))
    try:
        async with asyncio.timeout(HANG_GUARD):
            await reading.wait()
        # When a write is sent meanwhile
        async with asyncio.timeout(HANG_GUARD / 6):  # SQLite's busy wait would take 15 s
            written = await gql(
                client, manager_token, SET_STATUS, variables(conversation, "PENDING")
            )
        # Then it completes while the read is still open
        assert written.json()["data"] == {"updateConversationStatus": {"status": "PENDING"}}
        assert not read.done()
        assert await status_of(db, conversation) is ConversationStatus.PENDING
    finally:
        finish.set()
    # And the read answers what it saw
    response = await read
    assert response.json()["data"]["conversations"]["edges"][0]["node"]["status"] == "OPEN"


@postgres_only
async def test_postgres_connections_take_the_configured_statement_timeout(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    async def statement_timeout(**overrides: Any) -> str:
        settings = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            **overrides,
        )
        app = create_app(settings)
        async with lifespan(app):
            engine = runtime_of(app).db.engine
            async with engine.connect() as connection:
                return str((await connection.execute(text("SHOW statement_timeout"))).scalar())

    assert await statement_timeout() == "30s"
    assert await statement_timeout(database_statement_timeout="45s") == "45s"
    assert await statement_timeout(database_statement_timeout="2m") == "2min"
