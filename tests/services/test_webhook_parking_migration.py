"""Migration 0026: parked webhook events, and stored errors cut to their class."""

from __future__ import annotations

import uuid

from alembic.script import ScriptDirectory
from sqlalchemy import text

from tests.fixtures.databases import DatabaseUrls
from weflux.db import Database
from weflux.migrate import alembic_config, downgrade, migrate
from weflux.models import WebhookEvent, WebhookEventStatus

REVISION = "0026_webhook_parking"
QUOTING = "IntegrityError: DETAIL: Key (wa_id)=(16505559876) already exists."


async def _rows(owner_db: Database) -> dict[uuid.UUID, tuple[str, str | None]]:
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, status, last_error FROM webhook_events"))).all()
    return {uuid.UUID(str(row[0])): (row[1], row[2]) for row in rows}


async def test_the_migration_cuts_stored_errors_and_its_downgrade_unparks(
    database_urls: DatabaseUrls, db: Database, owner_db: Database
) -> None:
    """Given a parked event, when the migration is downgraded, then it is FAILED with no
    next attempt (the earlier sweep never takes it either);
    given errors stored before it with their message (one quoting a WhatsApp id) and a
    processing note, when it runs again, then each error is cut to its class, the note
    stays, and an event may be PARKED again."""
    parked, failed, noted = (uuid.uuid4() for _ in range(3))
    for event_id, status, error in (
        (parked, WebhookEventStatus.PARKED, "RuntimeError"),
        (failed, WebhookEventStatus.FAILED, "RuntimeError"),
        (noted, WebhookEventStatus.PROCESSED, "1 part(s) not understood"),
    ):
        async with db.session(webhook_event=event_id) as session:
            session.add(
                WebhookEvent(
                    id=event_id, body=b"{}", body_sha256="0" * 64, status=status, last_error=error
                )
            )
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(REVISION).down_revision
    assert isinstance(previous, str)

    await downgrade(database_urls.owner, previous)

    assert (await _rows(owner_db))[parked] == ("FAILED", "RuntimeError")
    async with owner_db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook_events SET last_error = :error WHERE status = 'FAILED'"),
            {"error": QUOTING},
        )

    await migrate(database_urls.owner, app_url=database_urls.app)

    assert await _rows(owner_db) == {
        parked: ("FAILED", "IntegrityError"),
        failed: ("FAILED", "IntegrityError"),
        noted: ("PROCESSED", "1 part(s) not understood"),
    }
    async with owner_db.session(all_workspaces="test: park again") as session:
        event = await session.get(WebhookEvent, parked)
        assert event is not None
        event.status = WebhookEventStatus.PARKED
    assert (await _rows(owner_db))[parked][0] == "PARKED"
