"""The erasure ledger: what each erasure and deletion removed, without personal data.

One row per erased contact (its ids, and HMAC-SHA256 of its WhatsApp id and user id
under the key ring's keyed-hash key) and one per deleted workspace. The app's role may
only append (row-level security); backups read it as the schema owner, and a restore
replays it (`replay`) so that what was erased after a backup was taken stays erased.

API for other modules (backups, restore):

- `record_contact_erasure(session, keyring, ...)`, `record_workspace_deletion(session, ...)`:
  append, in the transaction that completes the deletion.
- `entries(session, since=None)`: the rows, oldest first (a maintenance session).
- `replay(db, keyring, entries)`: apply rows to a restored database (idempotent).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import see_erased
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Contact, DataRequestKind, ErasureLedgerEntry

# The purpose string of the keyed hash: a ledger hash means nothing elsewhere.
HASH_PURPOSE = "erasure-ledger/wa-id"
USER_ID_PURPOSE = "erasure-ledger/user-id"
PAGE = 500


def wa_id_hash(keyring: KeyRing, wa_id: str, kid: str | None = None) -> tuple[str, str]:
    """(key id, hex HMAC) of a WhatsApp id, as the ledger stores it."""
    return keyring.keyed_hash(HASH_PURPOSE, wa_id, kid)


def user_id_hash(keyring: KeyRing, user_id: str, kid: str | None = None) -> tuple[str, str]:
    """(key id, hex HMAC) of a business-scoped user id, as the ledger stores it."""
    return keyring.keyed_hash(USER_ID_PURPOSE, user_id, kid)


def record_contact_erasure(
    session: AsyncSession,
    keyring: KeyRing,
    *,
    org_id: uuid.UUID,
    contact_id: uuid.UUID,
    wa_id: str | None,
    user_id: str | None,
    data_request_id: uuid.UUID | None,
) -> ErasureLedgerEntry:
    """Append the erasure of a contact (its identifiers only as keyed hashes)."""
    kid = keyring.primary_kid
    entry = ErasureLedgerEntry(
        kind=DataRequestKind.CONTACT_ERASURE,
        org_id=org_id,
        contact_id=contact_id,
        data_request_id=data_request_id,
        wa_id_hmac=wa_id_hash(keyring, wa_id, kid)[1] if wa_id else None,
        user_id_hmac=user_id_hash(keyring, user_id, kid)[1] if user_id else None,
        key_id=kid if (wa_id or user_id) else None,
    )
    session.add(entry)
    return entry


def record_workspace_deletion(
    session: AsyncSession, *, org_id: uuid.UUID, data_request_id: uuid.UUID | None
) -> ErasureLedgerEntry:
    """Append the deletion of a whole workspace."""
    entry = ErasureLedgerEntry(
        kind=DataRequestKind.WORKSPACE_DELETION, org_id=org_id, data_request_id=data_request_id
    )
    session.add(entry)
    return entry


async def entries(
    session: AsyncSession, *, since: datetime | None = None
) -> AsyncIterator[ErasureLedgerEntry]:
    """Every entry (recorded at or after `since`), oldest first, a page at a time.

    Needs a session that may read the ledger: on PostgreSQL the schema owner's.
    """
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        query = select(ErasureLedgerEntry).order_by(
            col(ErasureLedgerEntry.recorded_at), col(ErasureLedgerEntry.id)
        )
        if since is not None:
            query = query.where(col(ErasureLedgerEntry.recorded_at) >= since)
        if after is not None:
            at, last = after
            query = query.where(
                (col(ErasureLedgerEntry.recorded_at) > at)
                | (
                    (col(ErasureLedgerEntry.recorded_at) == at)
                    & (col(ErasureLedgerEntry.id) > last)
                )
            )
        rows = (await session.exec(query.limit(PAGE))).all()
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        after = (rows[-1].recorded_at, rows[-1].id)


def matches(entry: ErasureLedgerEntry, keyring: KeyRing, contact: Contact) -> bool:
    """Whether `contact` is the one `entry` erased: same id; or, for a contact created
    before the erasure, the same hashed WhatsApp id or user id in the same workspace.

    A contact created after the erasure is a person who wrote again: a new contact,
    never erased by replaying the old entry.
    """
    if entry.kind != DataRequestKind.CONTACT_ERASURE or contact.org_id != entry.org_id:
        return False
    if entry.contact_id == contact.id:
        return True
    if contact.created_at > entry.recorded_at:
        return False
    if entry.key_id is None or entry.key_id not in keyring.kids:
        return False
    kid = entry.key_id
    same_wa_id = bool(
        contact.wa_id
        and entry.wa_id_hmac
        and wa_id_hash(keyring, contact.wa_id, kid)[1] == entry.wa_id_hmac
    )
    same_user_id = bool(
        contact.user_id
        and entry.user_id_hmac
        and user_id_hash(keyring, contact.user_id, kid)[1] == entry.user_id_hmac
    )
    return same_wa_id or same_user_id


async def replay(db: Database, keyring: KeyRing, ledger: Iterable[ErasureLedgerEntry]) -> int:
    """Apply ledger entries to a (restored) database; the number of entries that found rows.

    A workspace entry deletes the workspace; a contact entry erases the contact with that
    id, and any contact of that workspace whose WhatsApp id or user id hashes to the
    entry's (a backup of a contact re-created in a restore under another id), with
    its raw webhook bodies. Idempotent. The entries are appended to this database's own
    ledger too (once), so a later backup carries them.
    `db` must see every workspace: the schema owner's maintenance handle.
    """
    from weflux.lifecycle import erasure  # erasure records into this module: import late

    applied = 0
    for entry in ledger:
        await _append_once(db, entry)
        if entry.kind == DataRequestKind.WORKSPACE_DELETION:
            if await erasure.purge_workspace(db, entry.org_id):
                applied += 1
            continue
        contact_ids = await _contacts_matching(db, keyring, entry)
        for contact_id in contact_ids:
            await erasure.purge_contact(db, entry.org_id, contact_id)
        applied += bool(contact_ids)
    return applied


async def _append_once(db: Database, entry: ErasureLedgerEntry) -> bool:
    async with db.session(all_workspaces="erasure ledger replay") as session:
        if await session.get(ErasureLedgerEntry, entry.id) is not None:
            return False
        session.add(ErasureLedgerEntry.model_validate(entry.model_dump()))
    return True


async def _contacts_matching(
    db: Database, keyring: KeyRing, entry: ErasureLedgerEntry
) -> list[uuid.UUID]:
    found: list[uuid.UUID] = []
    async with db.session(entry.org_id) as session:
        see_erased(session)
        rows = (await session.exec(select(Contact))).all()
        found = [row.id for row in rows if matches(entry, keyring, row)]
    return found
