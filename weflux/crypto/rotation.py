"""Key rotation: re-encrypt every stored secret under the primary key.

Rows are read in primary-key order, a batch per transaction, and each batch is
committed before the next is read, so an interrupted run loses at most one batch of
work and a new run simply carries on (values already under the primary key are
skipped). Rows of a batch are locked (`FOR UPDATE` on PostgreSQL) so that a
credential changed meanwhile by the app is never overwritten with its old value.

It crosses every workspace, so it runs on a maintenance handle: the schema owner's
URL (WEFLUX_DATABASE_MIGRATION_URL), whose role alone sees every row on PostgreSQL.

Deploy the new `WEFLUX_ENCRYPTION_KEYS` (new primary first, old keys after it) to
every process before rotating, and drop an old key only once a rotation reports no
failures: an envelope whose key is gone can no longer be opened.

Recovery codes are stored as keyed hashes (weflux.auth.recovery_codes), which cannot be
re-keyed without the codes: each keeps the key id it was made under. A rotation counts
them per key (`recovery_codes_by_kid`) so the operator keeps an old key while codes
need it; codes under a key the ring no longer holds, or still in the plain form of
before migration 0037, count as failures (they can no longer be verified).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select
from sqlmodel import SQLModel

import weflux.models  # noqa: F401  (every table must be in the metadata)
from weflux.auth import recovery_codes
from weflux.crypto.fields import NO_WORKSPACE, SECRET_COLUMNS
from weflux.crypto.keyring import DecryptionError, KeyRing, SecretContext
from weflux.db import Database
from weflux.services.audit import Action, record

log = logging.getLogger(__name__)

SCOPE_REASON = "key rotation"


@dataclass
class RotationReport:
    """What a rotation did, counted per stored secret value (empty columns are not counted)."""

    primary: str
    scanned: int = 0
    rotated: int = 0
    already_current: int = 0
    failed: int = 0
    rotated_by_workspace: Counter[uuid.UUID] = field(default_factory=Counter)
    # Unused recovery codes per key id of their keyed hash (None: plain, before 0037).
    recovery_codes_by_kid: Counter[str | None] = field(default_factory=Counter)
    # Of those, the codes no key of the ring can verify (their key is gone, or plain).
    recovery_codes_failed: int = 0

    @property
    def recovery_code_keys(self) -> list[str]:
        """The older keys that recovery codes still need: keep them in the ring."""
        return sorted(
            kid for kid in self.recovery_codes_by_kid if kid is not None and kid != self.primary
        )

    def summary(self) -> str:
        """One line for the terminal, e.g. `scanned 12, rotated 10, already current 2, failed 0`."""
        line = (
            f"scanned {self.scanned}, rotated {self.rotated}, "
            f"already current {self.already_current}, failed {self.failed}"
        )
        older = self.recovery_code_keys
        if older:
            codes = sum(self.recovery_codes_by_kid[kid] for kid in older)
            line += f"; {codes} recovery code(s) still need key(s) {', '.join(older)}"
        if self.recovery_codes_failed:
            line += f"; {self.recovery_codes_failed} recovery code(s) cannot be verified"
        return line

    def __str__(self) -> str:
        return self.summary()


def _table(name: str) -> Table:
    table = SQLModel.metadata.tables.get(name)
    if table is None:
        raise LookupError(f"SECRET_COLUMNS names the table `{name}`, which is not mapped")
    return table


async def rotate_keys(db: Database, keyring: KeyRing, *, batch_size: int = 100) -> RotationReport:
    """Re-encrypt, under the primary key, every secret of SECRET_COLUMNS sealed with another."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = RotationReport(primary=keyring.primary_kid)
    for name, columns in SECRET_COLUMNS.items():
        await _rotate_table(db, keyring, _table(name), columns, batch_size, report)
    await _count_recovery_codes(db, keyring, batch_size, report)
    if report.rotated_by_workspace:
        # One event per workspace, after the work: only what this run really changed.
        async with db.session(all_workspaces=SCOPE_REASON) as session:
            for org_id, rotated in sorted(report.rotated_by_workspace.items()):
                if org_id == NO_WORKSPACE:
                    continue  # people's own secrets (TOTP): counted in the report only
                await record(
                    session,
                    Action.KEYS_ROTATED,
                    org_id=org_id,
                    details={"rotated": rotated, "primary": keyring.primary_kid},
                )
    log.info(
        "key rotation finished",
        extra={
            "primary": report.primary,
            "scanned": report.scanned,
            "rotated": report.rotated,
            "already_current": report.already_current,
            "failed": report.failed,
            "recovery_code_keys": report.recovery_code_keys,
            "recovery_codes_failed": report.recovery_codes_failed,
        },
    )
    return report


async def _count_recovery_codes(
    db: Database, keyring: KeyRing, batch_size: int, report: RotationReport
) -> None:
    """Count the unused recovery codes per key id (a keyed hash is never re-keyed)."""
    users = _table("users")
    last_id: uuid.UUID | None = None
    while True:
        statement = (
            select(users.c.id, users.c.recovery_code_hashes)
            .where(users.c.recovery_code_hashes.is_not(None))
            .order_by(users.c.id)
            .limit(batch_size)
        )
        if last_id is not None:
            statement = statement.where(users.c.id > last_id)
        async with db.session(all_workspaces=SCOPE_REASON) as session:
            # A Core select of columns: sqlmodel's `exec` types only its own Select class.
            rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
        for row in rows:
            counts = recovery_codes.count_by_kid(row.recovery_code_hashes)
            report.recovery_codes_by_kid.update(counts)
            lost = sum(n for kid, n in counts.items() if kid not in keyring.kids)
            if lost:
                report.recovery_codes_failed += lost
                log.warning(
                    "recovery codes under a key the ring does not hold cannot be verified",
                    extra={"user_id": str(row.id), "codes": lost},
                )
        if len(rows) < batch_size:
            return
        last_id = rows[-1].id


async def _rotate_table(
    db: Database,
    keyring: KeyRing,
    table: Table,
    columns: tuple[str, ...],
    batch_size: int,
    report: RotationReport,
) -> None:
    """Rotate one table, a committed batch at a time, in primary-key order."""
    last_id: uuid.UUID | None = None
    while True:
        # A global table (users) has no workspace column: its secrets are bound to none.
        workspace = (table.c.org_id,) if "org_id" in table.c else ()
        statement = (
            select(table.c.id, *workspace, *(table.c[column] for column in columns))
            .order_by(table.c.id)
            .limit(batch_size)
            # Lock the batch: the app cannot change these credentials under our feet.
            .with_for_update()
        )
        if last_id is not None:
            statement = statement.where(table.c.id > last_id)
        async with db.session(all_workspaces=SCOPE_REASON) as session:
            # A Core select of columns: sqlmodel's `exec` types only its own Select class.
            rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
            for row in rows:
                values = _rotate_row(keyring, table.name, columns, row, report)
                if values:
                    update = table.update().where(table.c.id == row.id).values(values)
                    await session.exec(update)
        if len(rows) < batch_size:
            return
        last_id = rows[-1].id


def _rotate_row(
    keyring: KeyRing, table: str, columns: tuple[str, ...], row: Any, report: RotationReport
) -> dict[str, str]:
    """The new envelopes of one row's secrets that are not under the primary key."""
    values: dict[str, str] = {}
    for column in columns:
        envelope = getattr(row, column)
        if envelope is None:
            continue
        report.scanned += 1
        if not keyring.needs_rotation(envelope):
            report.already_current += 1
            continue
        org_id = getattr(row, "org_id", None) or NO_WORKSPACE
        context = SecretContext(org_id=org_id, table=table, column=column, row_id=row.id)
        try:
            secret = keyring.decrypt(envelope, context)
        except DecryptionError as exc:
            report.failed += 1
            # Where and why only: never the stored value.
            log.warning(
                "a stored secret could not be decrypted; it was left unchanged",
                extra={
                    "table": table,
                    "column": column,
                    "row_id": str(row.id),
                    "org_id": str(org_id),
                    "reason": exc.reason,
                },
            )
            continue
        values[column] = keyring.encrypt(secret.reveal(), context)
        report.rotated += 1
        report.rotated_by_workspace[org_id] += 1
    return values
