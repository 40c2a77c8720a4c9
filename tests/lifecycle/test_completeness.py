"""Every table is covered by the lifecycle promises, by construction: the tests read the
model metadata, so a table added without deciding its lifecycle fails here, by name.

- contact erasure: every table that refers to a contact (directly or through its
  conversations, messages or files) is deleted with it and is in the contact's export;
- workspace deletion: every table holding a workspace's rows is deleted with it, and is
  in the workspace's export unless said otherwise;
- the inventory (docs/lifecycle.md, "What personal data is where") names every table
  and every column that looks like personal data.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from tests.fixtures.factories import Actor, create_contact, create_conversation, create_message
from tests.fixtures.principals import principal_of
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure, exports
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.models import (
    ConversationLabel,
    DataRequestKind,
    Label,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    MessageReaction,
    Note,
    contact_reactor,
)
from weflux.services.audit import RequestMeta

INVENTORY = Path(__file__).parents[2] / "docs" / "lifecycle.md"
INVENTORY_HEADING = "## What personal data is where"

# Foreign keys into a contact's data without ON DELETE CASCADE: the erasure deletes
# their rows itself, before the row they point at.
DELETED_FIRST_BY_ERASURE = {
    # `purge_media_of(sender=...)`: stored bytes first, then the row (a cascade would
    # drop the row and leave the bytes in the store).
    ("media_files", "sender_contact_id"),
}
# Tables with an `org_id` that are not `OrgScoped` (so not in `deletion_order()`).
DELETED_LAST_BY_DELETION = {
    "data_requests": "with the workspace, so a worker killed halfway resumes",
    "security_alerts": "crossings.delete_workspace_alerts, in the last transaction",
}
KEPT_AFTER_DELETION = {
    "erasure_ledger": "ids and keyed hashes only; replayed on restore so nothing returns",
}
# Tables with an `org_id` left out of the workspace export, and why.
NOT_IN_WORKSPACE_EXPORT = {
    "sessions": "login sessions: the workspace's security state, not its data",
    "security_alerts": "the platform's alert outbox",
    "erasure_ledger": "the platform's record of erasures",
    "stored_object_intents": "storage keys of files being written: the store's plumbing",
}
# Column names that hold, or may hold, personal data; each must be named in its table's
# row of the inventory.
PERSONAL_LOOKING = re.compile(
    r"^(email|name|\w+_name|username|phone_number|display_phone_number|wa_id|user_id|"
    r"ip_address|user_agent|text|body|body_text|caption|filename|media|payload|details|"
    r"summary|last_error|error_title|emoji|audience|from_address|storage_key|title|"
    r"\w+_hmac)$"
)


def _tables() -> dict[str, sa.Table]:
    return dict(SQLModel.metadata.tables)


def _contact_data() -> dict[str, list[sa.ForeignKey]]:
    """Every table that refers to a contact, directly or through a table that does,
    with the foreign keys that make it so; `contacts` itself has none."""
    found: dict[str, list[sa.ForeignKey]] = {"contacts": []}
    grew = True
    while grew:
        grew = False
        for table in _tables().values():
            for key in table.foreign_keys:
                parent = key.column.table.name
                if (
                    parent in found
                    and parent != table.name
                    and key not in found.get(table.name, [])
                ):
                    found.setdefault(table.name, []).append(key)
                    grew = True
    return found


def _workspace_tables() -> set[str]:
    return {name for name, table in _tables().items() if "org_id" in table.c}


def test_every_reference_to_a_contacts_data_goes_with_it() -> None:
    """Given the metadata, when the foreign keys into a contact's data (contacts,
    conversations, messages, files, ...) are listed, then each either cascades or is
    deleted first by the erasure's purge."""
    loose = [
        f"{key.parent.table.name}.{key.parent.name} -> {key.column.table.name} "
        f"(ON DELETE {key.ondelete})"
        for keys in _contact_data().values()
        for key in keys
        if key.ondelete != "CASCADE"
        and (key.parent.table.name, key.parent.name) not in DELETED_FIRST_BY_ERASURE
    ]
    assert loose == [], (
        "contact erasure would leave these rows behind (or fail on them): give the "
        "foreign key ondelete='CASCADE', or delete the rows in erasure.purge_contact "
        "before their parent and list them in DELETED_FIRST_BY_ERASURE"
    )


def test_every_table_of_a_contacts_data_is_in_their_export() -> None:
    """Given the tables that refer to a contact, when a contact export is planned, then
    it reads every one of them (a subject access request: everything about them)."""
    planned = {table for table, _, _ in exports._tables(DataRequestKind.CONTACT_EXPORT, None)}
    missing = sorted(set(_contact_data()) - planned)
    assert missing == [], f"add to the contact export (exports._tables): {missing}"


def test_every_workspace_table_goes_with_the_workspace() -> None:
    """Given the tables with an `org_id`, when a workspace deletion is planned, then each
    is deleted in its batches, in its last transaction, or is kept by design; and every
    table referring to a workspace's rows without an `org_id` cascades from them."""
    ordered = {model.__tablename__ for model in erasure.deletion_order()}
    covered = ordered | set(DELETED_LAST_BY_DELETION) | set(KEPT_AFTER_DELETION)
    missing = sorted(_workspace_tables() - covered)
    assert missing == [], (
        f"workspace deletion does not reach {missing}: make the model OrgScoped (then "
        "deletion_order() includes it) or delete it in erasure.purge_workspace"
    )
    assert not ordered & (set(DELETED_LAST_BY_DELETION) | set(KEPT_AFTER_DELETION))
    owned = _workspace_tables() - set(KEPT_AFTER_DELETION)
    dangling = [
        f"{table.name}.{key.parent.name} -> {key.column.table.name}"
        for table in _tables().values()
        if table.name not in owned
        for key in table.foreign_keys
        if key.column.table.name in owned and key.ondelete != "CASCADE"
    ]
    assert dangling == [], "rows outside any workspace refer to a deleted workspace's rows"


def test_every_workspace_table_is_in_the_workspace_export() -> None:
    """Given the tables with an `org_id`, when a workspace export is planned, then it
    reads each, but those left out for a stated reason."""
    planned = {table for table, _, _ in exports._tables(DataRequestKind.WORKSPACE_EXPORT, None)}
    missing = sorted(_workspace_tables() - planned - set(NOT_IN_WORKSPACE_EXPORT))
    assert missing == [], f"add to the workspace export, or say why not: {missing}"
    assert not planned & set(NOT_IN_WORKSPACE_EXPORT)


def _inventory() -> dict[str, str]:
    """docs/lifecycle.md's inventory: each table's row, by the table it names first."""
    text = INVENTORY.read_text()
    assert INVENTORY_HEADING in text, f"{INVENTORY} has no `{INVENTORY_HEADING}` section"
    section = text.split(INVENTORY_HEADING, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        found = re.match(r"\|\s*`([a-z_]+)`", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_the_inventory_names_every_table_and_its_personal_columns() -> None:
    """Given the metadata and docs/lifecycle.md, when the inventory is read, then every
    table has a row and every column that may hold personal data is named in it."""
    rows = _inventory()
    assert sorted(set(_tables()) - set(rows)) == [], "tables missing from the inventory"
    assert sorted(set(rows) - set(_tables())) == [], "the inventory names tables that are gone"
    unnamed = [
        f"{name}.{column.name}"
        for name, table in _tables().items()
        for column in table.c
        if PERSONAL_LOOKING.match(column.name) and f"`{column.name}`" not in rows[name]
    ]
    assert unnamed == [], (
        "columns that may hold personal data, not named in their row of the inventory "
        "(docs/lifecycle.md): say what they hold and which promise deletes them"
    )


async def _related_ids(connection: AsyncConnection, contact_id: uuid.UUID) -> dict[str, set[str]]:
    """The ids of every row that refers to the contact, table by table, following the
    foreign keys that `_contact_data` found."""
    related: dict[str, set[str]] = {"contacts": {str(contact_id)}}
    data = _contact_data()
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in data or table.name == "contacts":
            continue
        found: set[str] = set()
        for key in data[table.name]:
            parents = related.get(key.column.table.name, set())
            if not parents:
                continue
            values = [uuid.UUID(p) for p in parents]
            rows = await connection.execute(
                sa.select(table.c.id).where(table.c[key.parent.name].in_(values))
            )
            found |= {str(uuid.UUID(str(row[0]))) for row in rows}
        related[table.name] = found
    return related


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing([("ledger1", os.urandom(32))])


async def test_an_erased_contact_leaves_no_row_in_any_table_that_refers_to_it(
    db: Database, owner_db: Database, admin: Actor, keyring: KeyRing
) -> None:
    """Given a contact with a row in every table that refers to a contact (found from
    the metadata: conversations, messages, reactions, notes, labels, files, ...),
    when it is erased and the worker runs,
    then none of those rows is left."""
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session)
        conversation = await create_conversation(session, contact=contact)
        message = await create_message(session, conversation)
        label = Label(name="vip", color="#aa0000")
        session.add(label)
        await session.flush()
        session.add(ConversationLabel(conversation_id=conversation.id, label_id=label.id))
        session.add(Note(conversation_id=conversation.id, text="prefers mornings"))
        session.add(
            MessageReaction(
                conversation_id=conversation.id,
                target_wa_message_id=message.wa_message_id or "wamid.1",
                reactor=contact_reactor(contact.id),
                contact_id=contact.id,
                emoji="👍",
            )
        )
        session.add(
            MediaFile(
                origin=MediaOrigin.INBOUND,
                message_id=message.id,
                sender_contact_id=contact.id,
                kind="image",
                mime_type="image/jpeg",
                caption="my passport",
                status=MediaStatus.READY,
            )
        )
    async with owner_db.engine.connect() as connection:
        before = await _related_ids(connection, contact.id)
    empty = sorted(table for table, ids in before.items() if not ids)
    assert empty == [], f"give the subject a row in {empty}, so this test proves its erasure"

    async with db.session(admin.org_id) as session:
        await lifecycle_requests.erase_contact(
            session, principal_of(admin), RequestMeta(), contact_id=contact.id
        )
    await run_due_requests(Lifecycle(db=db, keyring=keyring, batch=2))

    async with owner_db.engine.connect() as connection:
        left = {}
        for table, ids in before.items():
            rows = await connection.execute(
                sa.select(_tables()[table].c.id).where(
                    _tables()[table].c.id.in_([uuid.UUID(i) for i in ids])
                )
            )
            if still := rows.all():
                left[table] = len(still)
    assert left == {}, "rows of an erased contact left after the worker's purge"
