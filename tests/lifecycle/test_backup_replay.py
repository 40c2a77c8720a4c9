"""A restore's erasure replay: newer backups' ledgers are read, or the restore stops."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.fixtures.backups import backup_settings, populate, table_names
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import (
    create_actor,
    create_contact,
    create_conversation,
    create_message,
    create_org,
)
from tests.fixtures.principals import principal_of
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.backup_file import BackupError
from weflux.lifecycle.backup_replay import newer_ledger_entries, replay_erasures
from weflux.lifecycle.backups import create_backup, restore_backup
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.models import Role, WebhookEvent, WebhookEventStatus, utcnow
from weflux.services.audit import RequestMeta


async def test_a_contact_erased_after_a_backup_stays_erased_when_it_is_restored(
    database_urls: DatabaseUrls, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a backup holding a contact with its conversation, messages and a raw body
    naming it; then the contact is erased (the worker completes it) and a newer backup is
    taken,
    when the older backup is restored into an empty database,
    then the contact, its conversation, messages and the raw body are not there, the other
    workspace's rows are, and the restored ledger holds the erasure."""
    settings = backup_settings(tmp_path, database_urls)
    await populate(settings)
    db = Database(settings.database_url)
    try:
        async with db.session() as session:
            org = await create_org(session, name="Erasing Co")
            admin = await create_actor(session, Role.ADMIN)
        async with db.session(org.id) as session:
            contact = await create_contact(session, wa_id="4915199999999")
            conversation = await create_conversation(session, contact=contact)
            await create_message(session, conversation, text="forget me")
        body = b'{"contacts":[{"wa_id":"4915199999999"}]}'
        event_id = uuid.uuid4()
        async with db.session(webhook_event=event_id) as session:
            session.add(
                WebhookEvent(
                    id=event_id,
                    body=body,
                    body_sha256=hashlib.sha256(body).hexdigest(),
                    status=WebhookEventStatus.PROCESSED,
                    processed_at=utcnow(),
                )
            )
        older = await create_backup(settings)
        async with db.session(org.id) as session:
            await lifecycle_requests.erase_contact(
                session, principal_of(admin), RequestMeta(), contact_id=contact.id
            )
        await run_due_requests(Lifecycle(db=db, keyring=KeyRing.from_settings(settings)))
        await create_backup(settings)
    finally:
        await db.dispose()
    target = backup_settings(tmp_path, empty_database_urls)

    await restore_backup(target, older.path)

    restored = Database(empty_database_urls.owner, maintenance=True)
    try:
        async with restored.engine.connect() as connection:
            contacts = (
                await connection.execute(
                    text("SELECT count(*) FROM contacts WHERE wa_id = '4915199999999'")
                )
            ).scalar_one()
            messages = (
                await connection.execute(
                    text("SELECT count(*) FROM messages WHERE text = 'forget me'")
                )
            ).scalar_one()
            bodies = (
                await connection.execute(
                    text("SELECT count(*) FROM webhook_events WHERE body_sha256 = :digest"),
                    {"digest": hashlib.sha256(body).hexdigest()},
                )
            ).scalar_one()
            others = (await connection.execute(text("SELECT count(*) FROM messages"))).scalar_one()
            ledger_rows = (
                await connection.execute(text("SELECT count(*) FROM erasure_ledger"))
            ).scalar_one()
    finally:
        await restored.dispose()
    assert (contacts, messages, bodies) == (0, 0, 0)
    assert others > 0
    assert ledger_rows == 1


async def test_restore_without_a_ledger_replays_nothing(
    empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """This release has no erasure ledger table: the replay step is a no-op, not a refusal."""
    db = Database(empty_database_urls.owner, maintenance=True)
    try:
        async with db.engine.connect() as connection:
            assert await replay_erasures(connection, []) == 0
    finally:
        await db.dispose()


async def test_restore_stops_when_a_newer_backup_cannot_be_read_for_its_ledger(
    database_urls: DatabaseUrls, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """A newer backup in WEFLUX_BACKUP_DIR holds erasures to replay: if it cannot be
    opened, the restore is refused (nothing written) and names it."""
    source = backup_settings(tmp_path, database_urls)
    await populate(source)
    older = (await create_backup(source)).path
    newer = (await create_backup(source)).path
    target = backup_settings(tmp_path, empty_database_urls)
    _truncate(newer)

    with pytest.raises(BackupError, match=f"the newer backup {newer} cannot be read"):
        await restore_backup(target, older)

    assert await table_names(empty_database_urls.owner) == []


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


async def test_newer_backups_without_a_ledger_give_no_entries(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    settings = backup_settings(tmp_path, database_urls)
    older = await create_backup(settings)
    await create_backup(settings)

    entries = newer_ledger_entries(
        settings.backups_path, older.path, older.created_at, settings.backup_key_ring
    )

    assert entries == []
