"""`weflux backup`: round trips on each engine and across them, refusals, prune."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel, select

from tests.fixtures.backups import (
    backup_settings,
    populate,
    table_contents,
    table_names,
)
from tests.fixtures.databases import DatabaseUrls, SqliteTemplate, postgres_only, run_blocking
from weflux.auth import recovery_codes, totp
from weflux.config import Settings
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle.backup_file import BackupError
from weflux.lifecycle.backups import (
    Progress,
    create_backup,
    prune_backups,
    restore_backup,
    verify_backup,
)
from weflux.migrate import downgrade, head_revision, migrate
from weflux.models import User, WhatsAppAccount
from weflux.models.base import new_id, utcnow


async def test_a_backup_restores_every_row_on_the_same_engine(
    database_urls: DatabaseUrls, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a populated database, when it is backed up and restored into an empty one of
    the same engine, then every table holds the same rows, and the app's role reads them."""
    source = backup_settings(tmp_path, database_urls)
    await populate(source)
    summary = await create_backup(source)
    assert summary.path.parent == tmp_path / "backups"
    assert summary.tables["messages"] >= 5
    assert set(summary.tables) == set(SQLModel.metadata.tables)  # every table, by construction

    target = backup_settings(tmp_path, empty_database_urls)
    restored = await restore_backup(target, summary.path)

    assert restored.tables == summary.tables
    assert await table_contents(empty_database_urls.owner) == await table_contents(
        database_urls.owner
    )
    await _secrets_still_open(target, empty_database_urls)
    await _feed_continues_above_restored_positions(empty_database_urls)


async def _feed_continues_above_restored_positions(urls: DatabaseUrls) -> None:
    """Restored rows kept their change-feed positions (compared above); on PostgreSQL the
    feed's sequence is past all of them, so the next change sorts after every one."""
    engine = create_async_engine(urls.owner)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name != "postgresql":
                return
            highest = (
                await connection.execute(
                    text(
                        "SELECT greatest((SELECT max(update_seq) FROM conversations), "
                        "(SELECT max(update_seq) FROM messages))"
                    )
                )
            ).scalar_one()
            following = (
                await connection.execute(text("SELECT nextval('weflux_change_seq')"))
            ).scalar_one()
    finally:
        await engine.dispose()
    assert highest is not None
    assert following > highest


async def _secrets_still_open(settings: Settings, urls: DatabaseUrls) -> None:
    """The app (its own role on PostgreSQL) reads the restored rows; secrets still open."""
    db = Database(urls.app)
    owner = Database(urls.owner, maintenance=True)
    try:
        async with owner.session(all_workspaces="test: find the demo number") as session:
            account = (await session.exec(select(WhatsAppAccount))).first()
        assert account is not None
        async with db.session(account.org_id) as session:
            mine = await session.get(WhatsAppAccount, account.id)
            assert mine is not None
            token = open_secret(KeyRing.from_settings(settings), mine, "access_token_enc")
            assert token is not None
            assert token.reveal()
    finally:
        await db.dispose()
        await owner.dispose()


@postgres_only
async def test_a_sqlite_backup_restores_into_postgresql(
    sqlite_template: SqliteTemplate, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a demo on SQLite, when its backup is restored into an empty PostgreSQL, then
    every row is there, spelled alike, and the app's restricted role can use them."""
    (tmp_path / "source").mkdir()
    sqlite = sqlite_template.clone(tmp_path / "source")
    source = backup_settings(tmp_path, sqlite)
    await populate(source)
    summary = await create_backup(source)

    target = backup_settings(tmp_path, empty_database_urls)
    await restore_backup(target, summary.path)

    assert await table_contents(empty_database_urls.owner) == await table_contents(sqlite.owner)
    await _secrets_still_open(target, empty_database_urls)


async def test_restore_refuses_a_database_that_is_not_empty(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a backup, when it is restored over a database with tables, then it is refused
    and the database keeps its rows."""
    settings = backup_settings(tmp_path, database_urls)
    await populate(settings)
    summary = await create_backup(settings)
    before = await table_contents(database_urls.owner)

    with pytest.raises(BackupError, match="not empty"):
        await restore_backup(settings, summary.path)

    assert await table_contents(database_urls.owner) == before


async def test_a_backup_verifies_and_names_its_key_revision_and_time(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    settings = backup_settings(tmp_path, database_urls)
    await populate(settings)
    out = tmp_path / "elsewhere" / "b.wfxbak"

    summary = await create_backup(settings, out=out)

    verified = verify_backup(out, settings.backup_key_ring)
    assert summary.path == out
    assert out.stat().st_mode & 0o777 == 0o600
    assert (verified.kid, verified.revision, verified.tables) == (
        "bk1",
        summary.revision,
        summary.tables,
    )
    assert abs(verified.created_at - utcnow()) < timedelta(minutes=1)


async def test_prune_deletes_backups_past_retention_but_keeps_the_newest(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    settings = backup_settings(tmp_path, database_urls)
    first = (await create_backup(settings)).path
    second = (await create_backup(settings)).path
    stray = settings.backups_path / "notes.wfxbak"
    stray.write_text("not a backup")

    assert prune_backups(settings.backups_path, timedelta(days=30)) == []
    later = utcnow() + timedelta(days=31)
    deleted = prune_backups(settings.backups_path, timedelta(days=30), now=later)

    assert deleted == [first]
    assert not first.exists()
    assert second.exists()
    assert stray.exists()
    assert prune_backups(settings.backups_path, timedelta(days=30), now=later) == []
    assert await table_names(database_urls.owner)  # the database itself untouched


class _WriteDuringTheDump(Progress):
    """Progress that, once the first table is read, commits a new account elsewhere."""

    def __init__(self, owner_url: str) -> None:
        super().__init__("test", stream=io.StringIO())
        self.owner_url = owner_url
        self.written: uuid.UUID | None = None

    def advance(self, table: str, rows: int) -> None:
        super().advance(table, rows)
        if self.written is None:
            self.written = new_id()
            run_blocking(_insert_user(self.owner_url, self.written))


async def _insert_user(url: str, user_id: uuid.UUID) -> None:
    db = Database(url, maintenance=True)
    try:
        async with db.engine.begin() as connection:
            await connection.execute(
                insert(User.__table__),  # type: ignore[attr-defined]
                [
                    {
                        "id": user_id,
                        "email": f"{user_id}@example.com",
                        "name": "Late",
                        "password_hash": "x",
                        "created_at": utcnow(),
                    }
                ],
            )
    finally:
        await db.dispose()


async def test_a_backup_is_one_snapshot_and_misses_what_is_committed_meanwhile(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a backup under way, when another connection commits a new user after the
    first table was read, then the backup does not hold it (the database does)."""
    settings = backup_settings(tmp_path, database_urls)
    await populate(settings)
    progress = _WriteDuringTheDump(database_urls.owner)

    summary = await create_backup(settings, progress=progress)

    users_now = (await table_contents(database_urls.owner))["users"]
    assert progress.written is not None
    assert any(str(progress.written).encode() in row for row in users_now)
    assert summary.tables["users"] == len(users_now) - 1


def test_progress_lines_name_rows_table_and_rate_at_most_every_interval() -> None:
    stream = io.StringIO()
    progress = Progress("backup", stream=stream, every=0)
    progress.advance("messages", 1000)
    progress.advance("messages", 500)
    silent = io.StringIO()
    quiet = Progress("backup", stream=silent, every=3600)
    quiet.advance("messages", 1000)

    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("backup: 1,000 rows (messages), ")
    assert lines[1].startswith("backup: 1,500 rows (messages), ")
    assert silent.getvalue() == ""


async def test_a_database_behind_the_latest_migration_is_backed_up_and_restored_at_head(
    database_urls: DatabaseUrls, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a database migrations behind (a backup before `weflux migrate`), across
    0009_two_factor, which rebuilds `organizations` on SQLite (a rebuild that, with foreign
    keys enforced, would cascade into every child row), when it is backed up and restored,
    then the file names that revision, and the restore lands on this release's schema with
    the same rows as the source once migrated."""
    source = backup_settings(tmp_path, database_urls)
    await populate(source)
    await downgrade(database_urls.owner, "0008_incidents")

    summary = await create_backup(source)
    await restore_backup(backup_settings(tmp_path, empty_database_urls), summary.path)

    assert summary.revision != head_revision()
    await migrate(database_urls.owner, app_url=database_urls.app)
    assert await table_contents(empty_database_urls.owner) == await table_contents(
        database_urls.owner
    )


async def test_a_backup_from_before_keyed_recovery_codes_restores_them_wrapped(
    database_urls: DatabaseUrls, empty_database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given a backup taken at 0036, whose recovery codes are plain SHA-256, when it is
    restored, then no plain hash is left: each is wrapped under the application's key
    ring (migration 0037 in the restore's transaction), and an old code still matches."""
    source = backup_settings(tmp_path, database_urls)
    await populate(source)
    await downgrade(database_urls.owner, "0036_webhook_event_batches")
    codes = totp.new_recovery_codes()
    owner = Database(database_urls.owner, maintenance=True)
    try:
        async with owner.session(all_workspaces="test: recovery codes") as session:
            user = (await session.exec(select(User))).first()
            assert user is not None
            user_id = user.id
            user.recovery_code_hashes = " ".join(recovery_codes.digest(c) for c in codes)
    finally:
        await owner.dispose()
    summary = await create_backup(source)

    target = backup_settings(tmp_path, empty_database_urls)
    await restore_backup(target, summary.path)

    restored = Database(empty_database_urls.owner, maintenance=True)
    try:
        async with restored.session(all_workspaces="test: recovery codes") as session:
            user = await session.get(User, user_id)
            assert user is not None
            stored = user.recovery_code_hashes
    finally:
        await restored.dispose()
    assert stored is not None
    keyring = KeyRing.from_settings(target)
    assert recovery_codes.count_by_kid(stored) == {keyring.primary_kid: 10}
    assert recovery_codes.matching(keyring, user_id, stored, codes[4]) is not None
