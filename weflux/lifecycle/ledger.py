"""The erasure ledger: what each erasure and deletion removed, without personal data.

One row per erased contact (its ids, and HMAC-SHA256 of its WhatsApp id and user id
under the key ring's keyed-hash key) and one per deleted workspace. The app's role may
only append (row-level security); backups read it as the schema owner, and a restore
replays it (`replay`) so that what was erased after a backup was taken stays erased.

API for other modules (backups, restore):

- `record_contact_erasure(session, keyring, ...)`, `record_workspace_deletion(session, ...)`:
  append, in the transaction that completes the deletion.
- `entries(session, since=None)`: the rows, oldest first (a maintenance session).
- `replay_on_connection(connection, keyring, rows)`: append and apply rows on a
  restored database, in the caller's transaction (a restore's last step); `replay(db, ...)`
  does it in a transaction of its own. Idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.scoping import raise_feed_floor
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    DataRequestKind,
    ErasureLedgerEntry,
    MediaFile,
    Message,
    Organization,
    User,
    utcnow,
)

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
    """Apply ledger entries to a (restored) database, in one transaction of `db`'s owner.

    `db` must see every workspace: the schema owner's maintenance handle. See
    `replay_on_connection`.
    """
    rows = [entry.model_dump() for entry in ledger]
    async with db.engine.begin() as connection:
        return await replay_on_connection(connection, keyring, rows)


async def replay_on_connection(
    connection: AsyncConnection,
    keyring: KeyRing | None,
    newer: Sequence[Mapping[str, Any]],
) -> int:
    """Append the `newer` entries not in the database's ledger yet, then apply every entry
    of the ledger, oldest first; the number of entries that found something to delete.

    A workspace entry deletes the workspace (its rows go with it, by the foreign keys'
    cascades) and the accounts it leaves without any workspace. A contact entry deletes
    the contact with that id, and any contact of that workspace created before the entry
    whose WhatsApp id or user id hashes to the entry's (`matches`; by id only without
    `keyring`), with its conversations, messages, media files (`_delete_files_of`) and the
    raw webhook bodies naming it.
    Idempotent. `connection` is the schema owner's, inside the caller's transaction
    (a restore runs it last, in its own).
    """
    has_ledger = await connection.run_sync(
        lambda sync: sa.inspect(sync).has_table(ErasureLedgerEntry.__tablename__)
    )
    if not has_ledger:
        return 0
    table: sa.Table = ErasureLedgerEntry.__table__  # type: ignore[attr-defined]
    present = set((await connection.execute(sa.select(table.c.id))).scalars())
    fresh = [
        {column.name: entry.get(column.name) for column in table.c}
        for entry in newer
        if entry["id"] not in present
    ]
    if fresh:
        await connection.execute(table.insert(), fresh)
    ordered = sa.select(table).order_by(table.c.recorded_at, table.c.id)
    entries = [
        ErasureLedgerEntry.model_validate(dict(row))
        for row in (await connection.execute(ordered)).mappings()
    ]
    applied = 0
    for entry in entries:
        if entry.kind == DataRequestKind.WORKSPACE_DELETION:
            applied += await _delete_workspace(connection, entry.org_id)
        else:
            applied += await _erase_contacts(connection, keyring, entry)
    return applied


async def _delete_workspace(connection: AsyncConnection, org_id: uuid.UUID) -> int:
    organizations: sa.Table = Organization.__table__  # type: ignore[attr-defined]
    users: sa.Table = User.__table__  # type: ignore[attr-defined]
    members = await crossings.workspace_member_user_ids(connection, org_id)
    gone = await connection.execute(sa.delete(organizations).where(organizations.c.id == org_id))
    await crossings.delete_workspace_alerts_as_owner(connection, org_id)
    if members:
        orphan = crossings.orphan(users.c, at=utcnow())
        await connection.execute(sa.delete(users).where(users.c.id.in_(members), orphan))
    return 1 if gone.rowcount else 0


async def _erase_contacts(
    connection: AsyncConnection, keyring: KeyRing | None, entry: ErasureLedgerEntry
) -> int:
    contacts: sa.Table = Contact.__table__  # type: ignore[attr-defined]
    rows = await crossings.workspace_contact_keys(connection, entry.org_id)
    doomed = []
    for row in rows:
        contact = Contact.model_construct(**dict(row))
        if contact.id == entry.contact_id or (
            keyring is not None and matches(entry, keyring, contact)
        ):
            doomed.append(contact)
    postgres = connection.dialect.name == "postgresql"
    erase_body = sa.text(
        "DELETE FROM webhook_events WHERE position(convert_to(:needle, 'UTF8') IN body) > 0"
        if postgres
        else "DELETE FROM webhook_events WHERE instr(body, :needle) > 0"
    )
    for contact in doomed:
        for identifier in (contact.wa_id, contact.user_id):
            if identifier:
                needle = crossings.body_needle(identifier)
                await connection.execute(
                    erase_body, {"needle": needle if postgres else needle.encode()}
                )
        await _delete_files_of(connection, contact.id)
        # Conversations and their messages go by the foreign keys' cascades; on SQLite
        # their positions stay below the workspace's feed floor (never handed out again).
        await raise_feed_floor(connection, entry.org_id)
        await connection.execute(sa.delete(contacts).where(contacts.c.id == contact.id))
    return 1 if doomed else 0


async def _delete_files_of(connection: AsyncConnection, contact_id: uuid.UUID) -> None:
    """Delete the media file rows an erasure deletes (`erasure.purge_media_of`): those the
    contact sent (`sender_contact_id`), even if sent on or detached from their message,
    and those sent to it that no other conversation's message carries or received. Rows
    only: a backup holds no stored file."""
    files: sa.Table = MediaFile.__table__  # type: ignore[attr-defined]
    messages: sa.Table = Message.__table__  # type: ignore[attr-defined]
    conversations: sa.Table = Conversation.__table__  # type: ignore[attr-defined]
    other = messages.alias("other")
    theirs = sa.select(conversations.c.id).where(conversations.c.contact_id == contact_id)
    sent_to_them = sa.select(messages.c.media_file_id).where(
        messages.c.conversation_id.in_(theirs), messages.c.media_file_id.is_not(None)
    )
    elsewhere = other.c.conversation_id.not_in(theirs)
    kept = sa.or_(
        sa.exists().where(other.c.media_file_id == files.c.id, elsewhere),
        sa.exists().where(other.c.id == files.c.message_id, elsewhere),
    )
    await connection.execute(
        sa.delete(files).where(
            # The contact's own rows: its id is unique across workspaces.
            sa.or_(
                files.c.sender_contact_id == contact_id,
                sa.and_(files.c.id.in_(sent_to_them), ~kept),
            )
        )
    )
