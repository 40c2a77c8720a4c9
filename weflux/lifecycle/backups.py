"""`weflux backup`: consistent, encrypted, streamed snapshots of the whole database.

`create` reads every table in one snapshot transaction as the schema owner (the app's
role sees one workspace per transaction) and seals JSON Lines per table, in foreign-key
order, through `weflux.lifecycle.backup_file`. `restore` opens and checks the whole file
before writing anything, then, in one transaction on an empty database, creates the
schema at the backup's revision, loads the rows, migrates to this release's head and
replays the erasure ledger; only then does it commit and grant the app's role its rights.
Stored secrets are copied as they are: sealed under the application's key ring.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import MetaData, Table, insert, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

import weflux.models  # noqa: F401  (fills the metadata)
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing as EncryptionKeys
from weflux.db import Database, begin_snapshot, maintenance_database
from weflux.lifecycle.backup_file import (
    SUFFIX,
    BackupError,
    BackupHeader,
    BackupReader,
    BackupWriter,
    KeyRing,
    read_header,
)
from weflux.lifecycle.backup_replay import newer_ledger_entries, replay_erasures
from weflux.lifecycle.backup_rows import TableEnd, TableLayout, TableStart, end_line, records
from weflux.migrate import head_revision, is_known_revision, migrate, upgrade_in_transaction
from weflux.models import utcnow

log = logging.getLogger(__name__)

ROWS_PER_FETCH = 1000
ROWS_PER_INSERT = 1000


class Progress:
    """Progress lines on the terminal (stderr) for long runs, at most one every `every` s."""

    def __init__(self, action: str, stream: TextIO | None = None, every: float = 2.0) -> None:
        self.action = action
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.started = time.monotonic()
        self._last = self.started
        self.rows = 0

    def advance(self, table: str, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = self.rows / max(now - self.started, 1e-9)
            print(
                f"{self.action}: {self.rows:,} rows ({table}), {rate:,.0f} rows/s",
                file=self.stream,
                flush=True,
            )


@dataclass
class BackupSummary:
    """What a backup holds (or a restore loaded)."""

    path: Path
    kid: str
    revision: str
    created_at: datetime
    tables: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def describe(self) -> str:
        return (
            f"{self.path}: key `{self.kid}`, schema {self.revision}, taken "
            f"{self.created_at.isoformat()}, {self.rows:,} rows in {len(self.tables)} tables"
        )


def backup_name(created_at: datetime) -> str:
    return f"weflux-{created_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}{SUFFIX}"


# --- create ---------------------------------------------------------------------------------


async def create_backup(
    settings: Settings, *, out: Path | None = None, progress: Progress | None = None
) -> BackupSummary:
    """Write a backup of the whole database (WEFLUX_DATABASE_MIGRATION_URL)."""
    kid, key = settings.backup_key_ring[0]
    db = await maintenance_database(settings.migration_url)
    try:
        async with db.engine.connect() as connection:
            await begin_snapshot(connection)
            revision = await _snapshot_revision(connection)
            header = BackupHeader.new(
                kid=kid, revision=revision, created_at=utcnow(), dialect=db.dialect
            )
            path = (
                out if out is not None else settings.backups_path / backup_name(header.created_at)
            )
            writer = BackupWriter(path, header, key)
            try:
                tables = await _dump(connection, writer, revision, progress)
                writer.finish({"tables": tables})
            except BaseException:
                writer.abort()
                raise
            await connection.rollback()
    finally:
        await db.dispose()
    return BackupSummary(path, kid, revision, header.created_at, tables)


async def _snapshot_revision(connection: AsyncConnection) -> str:
    if not await connection.run_sync(lambda sync: inspect(sync).has_table("alembic_version")):
        raise BackupError("the database has no schema: nothing to back up")
    revisions = [
        str(row[0])
        for row in (await connection.execute(text("SELECT version_num FROM alembic_version")))
    ]
    if len(revisions) != 1 or not is_known_revision(revisions[0]):
        at = ", ".join(sorted(revisions)) or "no migration"
        raise BackupError(
            f"the database schema is at {at}, which this release does not know: "
            "back it up with the release that migrated it"
        )
    return revisions[0]


async def _dump(
    connection: AsyncConnection, writer: BackupWriter, revision: str, progress: Progress | None
) -> dict[str, int]:
    counts: dict[str, int] = {}
    if revision == head_revision():
        tables = list(SQLModel.metadata.sorted_tables)
    else:  # an older schema (a backup before `weflux migrate`): what the database holds
        reflected = await connection.run_sync(_reflect)
        tables = [table for table in reflected.sorted_tables if table.name != "alembic_version"]
    for source in tables:
        model = SQLModel.metadata.tables.get(source.name)
        layout = TableLayout.of(source, model)
        encoders = layout.encoders()
        writer.write(layout.start_line())
        order = [layout.table.c[column.name] for column in source.primary_key.columns]
        statement = layout.select().order_by(*order)
        result = await connection.stream(statement.execution_options(yield_per=ROWS_PER_FETCH))
        rows = 0
        async for partition in result.partitions(ROWS_PER_FETCH):
            writer.write(b"".join(layout.row_line(row, encoders) for row in partition))
            rows += len(partition)
            if progress is not None:
                progress.advance(source.name, len(partition))
        writer.write(end_line(source.name, rows))
        counts[source.name] = rows
    return counts


# --- verify ---------------------------------------------------------------------------------


def verify_backup(path: Path, keys: KeyRing, progress: Progress | None = None) -> BackupSummary:
    """Open and check the whole file without restoring it; BackupError when it fails."""
    reader = BackupReader(path, keys)
    tables: dict[str, int] = {}
    current = ""
    for record in records(reader.chunks()):
        if isinstance(record, TableStart):
            if record.name in tables:
                raise BackupError(f"table `{record.name}` appears twice")
            tables[record.name] = 0
            current = record.name
        elif isinstance(record, TableEnd):
            tables[record.name] = record.rows
        elif progress is not None:
            progress.advance(current, 1)
    assert reader.trailer is not None  # chunks() ended without an error: the trailer checked
    if reader.trailer.get("tables") != tables:
        raise BackupError("the trailer's row counts do not match the data: the file was altered")
    header = reader.header
    return BackupSummary(path, header.kid, header.revision, header.created_at, tables)


# --- restore --------------------------------------------------------------------------------


async def restore_backup(
    settings: Settings, path: Path, *, progress: Progress | None = None
) -> BackupSummary:
    """Restore `path` into the empty database of WEFLUX_DATABASE_MIGRATION_URL.

    Nothing is written unless the whole file verifies, the target is empty, and the
    load and the erasure replay succeed: they run in one transaction with the schema.
    """
    keys = settings.backup_key_ring
    checking = None
    if progress is not None:
        checking = Progress(
            f"{progress.action} (checking the file)", progress.stream, progress.every
        )
    summary = verify_backup(path, keys, checking)
    if not is_known_revision(summary.revision):
        raise BackupError(
            f"the backup's schema revision {summary.revision} is unknown to this release: "
            "restore it with the release that made it (or a newer one)"
        )
    newer = newer_ledger_entries(settings.backups_path, path, summary.created_at, keys)
    keyring = EncryptionKeys.from_settings(settings)
    # Not `maintenance_database`: its role check asks who owns the tables, and there are
    # none yet. The role that creates them here owns them, as `weflux migrate` would.
    db = Database(settings.migration_url, pool_size=1, maintenance=True)
    try:
        async with db.engine.connect() as connection:
            await connection.begin()
            await _refuse_non_empty(connection)
            if db.dialect == "postgresql":
                await connection.execute(text("SET LOCAL statement_timeout = 0"))
                # Schemas before 0007 admit the owner's writes to every workspace only so.
                await connection.execute(
                    text("SELECT set_config('app.all_workspaces', 'on', true)")
                )
            await connection.run_sync(upgrade_in_transaction, summary.revision)
            target = await connection.run_sync(_reflect)
            feed_tables = await _feed_triggers(connection, enabled=False)
            loaded = await _load(connection, BackupReader(path, keys), target, progress)
            if loaded != summary.tables:
                raise BackupError("the file changed while it was being restored")
            await _feed_triggers(connection, enabled=True, tables=feed_tables)
            # This release's schema, still in the transaction: the replay runs on it. The
            # key ring wraps an older backup's recovery codes (migration 0037).
            await connection.run_sync(upgrade_in_transaction, "head", keyring)
            await replay_erasures(connection, newer, keyring)
            await connection.commit()
    finally:
        await db.dispose()
    # The app's role's grants (a separate role on PostgreSQL); the upgrade is done already.
    await migrate(settings.migration_url, app_url=settings.database_url)
    return summary


async def _feed_triggers(
    connection: AsyncConnection, *, enabled: bool, tables: list[str] | None = None
) -> list[str]:
    """The change feed's triggers (PostgreSQL, schemas from 0018) off during the load, so
    restored rows keep their feed positions; back on after it, with the feed's sequence
    moved above every restored position (a change after the restore sorts after them).
    The tables the trigger is on."""
    if connection.dialect.name != "postgresql":
        return []
    if tables is None:
        rows = await connection.execute(
            text(
                "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE t.tgname = 'weflux_change_feed' ORDER BY c.relname"
            )
        )
        tables = [str(row[0]) for row in rows]
    verb = "ENABLE" if enabled else "DISABLE"
    quote = connection.dialect.identifier_preparer.quote  # names from pg_trigger, quoted
    for table in tables:
        await connection.execute(
            text(f"ALTER TABLE {quote(table)} {verb} TRIGGER weflux_change_feed")
        )
    if enabled and tables:
        highest = " UNION ALL ".join(
            f"SELECT max(update_seq) AS s FROM {quote(t)}"  # noqa: S608 (catalogue names)
            for t in tables
        )
        above = f"SELECT greatest(coalesce(max(s), 0), 1) FROM ({highest}) AS feed"  # noqa: S608
        await connection.execute(text(f"SELECT setval('weflux_change_seq', ({above}))"))
    return tables


async def _refuse_non_empty(connection: AsyncConnection) -> None:
    names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    if names:
        raise BackupError(
            f"the target database is not empty ({len(names)} tables, e.g. `{sorted(names)[0]}`): "
            "restore writes only into an empty database"
        )


def _reflect(connection: Connection) -> MetaData:
    metadata = MetaData()
    with warnings.catch_warnings():
        # Expression indexes are not reflected; only the columns matter here.
        warnings.simplefilter("ignore", SAWarning)
        metadata.reflect(connection)
    return metadata


async def _load(
    connection: AsyncConnection,
    reader: BackupReader,
    target: MetaData,
    progress: Progress | None,
) -> dict[str, int]:
    counts: dict[str, int] = {}
    layout: TableLayout | None = None
    batch: list[dict[str, Any]] = []
    for record in records(reader.chunks()):
        if isinstance(record, TableStart):
            if record.name not in target.tables:
                raise BackupError(
                    f"table `{record.name}` does not exist at the backup's schema revision"
                )
            model = SQLModel.metadata.tables.get(record.name)
            layout = TableLayout.for_restore(
                record.name, record.columns, model, target.tables[record.name]
            )
            counts[record.name] = 0
        elif isinstance(record, TableEnd):
            assert layout is not None
            await _insert(connection, layout.table, batch, progress)
            counts[record.name] = record.rows
            layout = None
        else:
            assert layout is not None
            batch.append(layout.decode(record))
            if len(batch) >= ROWS_PER_INSERT:
                await _insert(connection, layout.table, batch, progress)
    # `records` ended: the whole file authenticated again, trailer included.
    return counts


async def _insert(
    connection: AsyncConnection,
    table: Table,
    batch: list[dict[str, Any]],
    progress: Progress | None,
) -> None:
    if not batch:
        return
    await connection.execute(insert(table), batch)
    if progress is not None:
        progress.advance(table.name, len(batch))
    batch.clear()


# --- prune ----------------------------------------------------------------------------------


def prune_backups(
    directory: Path, retention: timedelta, *, now: datetime | None = None
) -> list[Path]:
    """Delete the backups in `directory` taken more than `retention` ago; keep the newest.

    Age is the time in each file's header; files that are not backups are left alone, as
    are unfinished ones (`.partial`) younger than `retention` by their modification time.
    """
    now = now if now is not None else utcnow()
    cutoff = now - retention
    dated: list[tuple[datetime, Path]] = []
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            header, _ = read_header(path)
        except (BackupError, OSError) as exc:
            log.warning("not a backup, left alone: %s (%s)", path, exc)
            continue
        dated.append((header.created_at, path))
    newest = max(dated)[1] if dated else None
    doomed = [path for taken, path in dated if taken < cutoff and path != newest]
    for partial in directory.glob(f"*{SUFFIX}.partial"):
        if partial.stat().st_mtime < cutoff.timestamp():
            doomed.append(partial)
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
