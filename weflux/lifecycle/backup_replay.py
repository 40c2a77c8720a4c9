"""A restore's last step: replay the erasure ledger, so that nothing erased comes back.

Each backup carries the erasure ledger (issue 12) as of its time. A contact erased after
the restored backup was taken is in it; the ledgers of the newer backups in
WEFLUX_BACKUP_DIR name it. `restore_backup` reads them before writing anything
(`newer_ledger_entries`) and calls `replay_erasures` last, inside its transaction.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Table
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import NullType

import weflux.models  # noqa: F401  (fills the metadata)
from weflux.crypto.keyring import KeyRing as EncryptionKeys
from weflux.lifecycle.backup_file import SUFFIX, BackupError, BackupReader, KeyRing, read_header
from weflux.lifecycle.backup_rows import TableLayout, TableStart, records
from weflux.lifecycle.ledger import replay_on_connection

ERASURE_LEDGER_TABLE = "erasure_ledger"


def newer_ledger_entries(
    directory: Path, restored: Path, taken_at: datetime, keys: KeyRing
) -> list[dict[str, Any]]:
    """The erasure ledger rows of every backup in `directory` taken after `taken_at`.

    Each newer backup is opened and checked whole; one that cannot be read stops the
    restore (its erasures could not be replayed): move it away to restore without it.
    """
    entries: list[dict[str, Any]] = []
    if not directory.is_dir():
        return entries
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.resolve() == restored.resolve():
            continue
        try:
            header, _ = read_header(path)
            if header.created_at <= taken_at:
                continue
            entries.extend(_ledger_rows(path, keys))
        except BackupError as exc:
            raise BackupError(
                f"the newer backup {path} cannot be read for its erasure ledger ({exc}); "
                "move it out of WEFLUX_BACKUP_DIR to restore without it"
            ) from None
    return entries


def _ledger_rows(path: Path, keys: KeyRing) -> list[dict[str, Any]]:
    reader = BackupReader(path, keys)
    layout: TableLayout | None = None
    rows: list[dict[str, Any]] = []
    for record in records(reader.chunks()):
        if isinstance(record, TableStart):
            layout = None
            if record.name == ERASURE_LEDGER_TABLE:
                layout = TableLayout.for_restore(
                    record.name, record.columns, None, _plain_table(record.name, record.columns)
                )
        elif isinstance(record, list) and layout is not None:
            rows.append(layout.decode(record))
    return rows


def _plain_table(name: str, columns: list[tuple[str, str]]) -> Table:
    return Table(name, MetaData(), *(Column(column, NullType()) for column, _ in columns))


async def replay_erasures(
    connection: AsyncConnection,
    newer_entries: list[dict[str, Any]],
    keyring: EncryptionKeys | None = None,
) -> int:
    """The restore's last step, in its transaction: erase again what the ledger names.

    `connection` is the schema owner's (it sees every row), inside the restore's open
    transaction, on this release's schema (head) with every row of the backup loaded; a
    failure here rolls the whole restore back. `newer_entries` are the ledger rows of
    backups taken after the restored one (`newer_ledger_entries`); the restored ledger's
    own rows are in the database already. `keyring` is the application's key ring
    (WEFLUX_ENCRYPTION_KEYS), whose keys made the ledger's hashes: without it, entries
    match contacts by id only. The work is `weflux.lifecycle.ledger.replay_on_connection`.
    """
    return await replay_on_connection(connection, keyring, newer_entries)
