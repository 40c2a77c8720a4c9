"""A restore's erasure replay: newer backups' ledgers are read, or the restore stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.backups import backup_settings, populate, table_names
from tests.fixtures.databases import DatabaseUrls
from weflux.db import Database
from weflux.lifecycle.backup_file import BackupError
from weflux.lifecycle.backup_replay import newer_ledger_entries, replay_erasures
from weflux.lifecycle.backups import create_backup, restore_backup


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
