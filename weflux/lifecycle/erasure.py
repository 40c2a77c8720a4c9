"""Erasure: the tombstone at once, then hard deletion in batches that survive a crash.

`tombstone_contact` runs in the request's own transaction: from its commit the
contact, its conversations and their messages are hidden by the scoping layer
(weflux.auth.scoping) from every query, `node`, subscription, replay and export, and its
queued outbound messages will never be sent. `purge_contact` and `purge_workspace` are
the worker's: each batch is a transaction of its own, and each step starts from what is
left, so a worker killed halfway finishes on its next run. Raw webhook bodies naming an
erased contact are deleted whole (docs/lifecycle.md says why not redacted).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, true, update
from sqlalchemy.orm import aliased
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.scoping import feed_values, raise_feed_floor, see_erased
from weflux.db import Database
from weflux.lifecycle.exports import withdraw_holding
from weflux.media import intents
from weflux.media.store import MediaStore
from weflux.models import (
    Contact,
    Conversation,
    ConversationRemoval,
    DataRequest,
    MediaFile,
    MediaStatus,
    Membership,
    Message,
    MessageStatus,
    Organization,
    OrgScoped,
    RemovalReason,
    StoredObjectIntent,
    utcnow,
    workspace_models,
)
from weflux.realtime.broker import Broker
from weflux.services.removals import record_removal

DEFAULT_BATCH = 500
ERASED_ERROR = "contact erased"
# A media file claimed by a purge (`MediaFile.failure`): its stored file and row go next.
PURGED = "deleted"
# Rows holding change-feed positions: deleting them raises the feed's floor first.
FEED_MODELS: tuple[type[SQLModel], ...] = (Conversation, Message, ConversationRemoval)

Progress = Callable[[float], Awaitable[None]]
# Runs in the last transaction of a purge, with the erased contact's (wa_id, user_id).
Finish = Callable[[AsyncSession, str | None, str | None], Awaitable[None]]


async def tombstone_contact(
    session: AsyncSession, contact: Contact, *, now: datetime, broker: Broker | None = None
) -> None:
    """Hide a contact and everything of it at once; stop its queued outbound messages.

    The changed rows take positions in the workspace's change feed, and with a broker each
    conversation's removal is announced to its subscribers (`conversationRemoved`). An
    export that may hold the contact is destroyed or built again (`withdraw_holding`).
    """
    conversation_ids = select(col(Conversation.id)).where(Conversation.contact_id == contact.id)
    dialect = (await session.connection()).dialect.name
    # Before the conversations are flagged: from then on their messages are hidden.
    await session.exec(
        update(Message)
        .where(
            col(Message.conversation_id).in_(conversation_ids),
            col(Message.status).in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
        )
        .values(
            status=MessageStatus.FAILED,
            next_attempt_at=None,
            error_title=ERASED_ERROR,
            **feed_values(dialect, contact.org_id),
        )
    )
    erased = (
        await session.exec(
            select(Conversation.id, Conversation.assignee_membership_id).where(
                Conversation.contact_id == contact.id
            )
        )
    ).all()
    await session.exec(
        update(Conversation)
        .where(col(Conversation.contact_id) == contact.id)
        .values(erased_at=now, **feed_values(dialect, contact.org_id))
    )
    contact.erased_at = now
    session.add(contact)
    await withdraw_holding(session, contact.id, now=now)
    await session.flush()
    for conversation_id, assignee in erased:
        record_removal(
            session,
            broker,
            contact.org_id,
            RemovalReason.ERASED,
            conversation_id=conversation_id,
            member_id=assignee,
        )
    await session.flush()


async def _noop(_: float) -> None:
    return None


async def purge_contact(
    db: Database,
    org_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress = _noop,
    finish: Finish | None = None,
    media: MediaStore | None = None,
) -> bool:
    """Hard-delete an erased contact: raw webhook bodies naming it, the media files of its
    conversations (those it sent and those sent to it, stored files too), messages,
    conversations, the contact; `finish` runs in the last transaction (ledger, request).

    False when the contact is already gone (then `finish` still runs once).
    """
    async with db.session(org_id) as session:
        see_erased(session)
        contact = await session.get(Contact, contact_id)
        if contact is None:
            if finish is not None:
                await finish(session, None, None)
            return False
        if contact.erased_at is None:  # a ledger replay of a restored backup
            await tombstone_contact(session, contact, now=utcnow())
        wa_id, user_id = contact.wa_id, contact.user_id
        needles = [crossings.body_needle(v) for v in (wa_id, user_id) if v]
    await progress(0.05)
    while True:
        async with db.session(org_id) as session:
            gone = await crossings.erase_webhook_bodies(session, needles, batch=batch)
        if gone < batch:
            break
    await progress(0.2)
    conversations = select(col(Conversation.id)).where(Conversation.contact_id == contact_id)
    messages = select(col(Message.id)).where(col(Message.conversation_id).in_(conversations))
    # Tombstoned above: the contact's own messages (erased conversations) keep nothing.
    await purge_media_of(db, media, org_id, messages, batch, sender=contact_id)
    await delete_in_batches(
        db, org_id, Message, col(Message.conversation_id).in_(conversations), batch
    )
    await progress(0.9)
    await delete_in_batches(db, org_id, Conversation, Conversation.contact_id == contact_id, batch)
    async with db.session(org_id) as session:
        see_erased(session)
        await session.exec(delete(Contact).where(col(Contact.id) == contact_id))
        if finish is not None:
            await finish(session, wa_id, user_id)
    return True


async def purge_media_of(
    db: Database,
    store: MediaStore | None,
    org_id: uuid.UUID,
    messages: Any,
    batch: int,
    *,
    survives: Callable[[Any], Any] = lambda _: true(),
    sender: uuid.UUID | None = None,
) -> int:
    """Delete the media files of the messages `messages` (a subquery of message ids)
    selects, before those messages go; how many went (docs/lifecycle.md#which-files-go-when).

    A file goes when no message kept carries it (`media_file_id`) or received it
    (`message_id`), whatever its origin: a message is kept when `survives(message)` (a
    condition on an alias of Message: not purged now) and its conversation is not erased.
    So a file sent in several conversations goes with the last of them. With `sender`
    (a contact's erasure), the files that contact sent (`sender_contact_id`) go whatever
    carries them, even those retention detached from their message earlier: they are the
    contact's media (CONTRACT §7). A file that stays is detached from its purged message
    (`message_id` null, its sender kept) before that message goes, so the foreign key's
    cascade never takes its row; carried by nothing later, it expires as an unsent upload
    does (`unsent_files`).

    Two statements, not an OR: each keeps its index (the EXISTS are anti-joins probing
    `ix_messages_org_id_media_file_id` and the messages' primary key).
    """
    received = col(MediaFile.message_id).in_(messages)
    sent = select(col(Message.media_file_id)).where(
        col(Message.id).in_(messages), col(Message.media_file_id).is_not(None)
    )
    erased = select(col(Conversation.id)).where(col(Conversation.erased_at).is_not(None))

    def kept_message(other: Any) -> tuple[Any, ...]:
        return survives(other), other.conversation_id.not_in(erased)

    kept = or_(_carried(kept_message), _received_by(kept_message))
    if sender is not None:
        # Wait for a sendMedia holding one (it fails: the contact is hidden) rather than
        # skip it: a skipped file would outlive the contact. Every file received with the
        # contact's messages names it (set at ingest, backfilled by 0024).
        theirs = col(MediaFile.sender_contact_id) == sender
        total = await purge_media(db, store, org_id, theirs, batch, wait=True)
    else:
        total = await purge_media(db, store, org_id, and_(received, ~kept), batch)
    total += await purge_media(db, store, org_id, and_(col(MediaFile.id).in_(sent), ~kept), batch)
    await _detach(db, org_id, received, batch)
    return total


def _carried(where: Callable[[Any], tuple[Any, ...]] = lambda _: ()) -> Any:
    """Whether a message (`where(message)`) carries the file: EXISTS, one probe of
    `ix_messages_org_id_media_file_id` per file.

    The message is an alias: a `messages` subquery inside `where` must not correlate
    with it.
    """
    other = aliased(Message)
    return select(other.id).where(other.media_file_id == col(MediaFile.id), *where(other)).exists()


def _received_by(where: Callable[[Any], tuple[Any, ...]]) -> Any:
    """Whether the file was received with a message (`where(message)`): EXISTS, one
    probe of the messages' primary key per file."""
    own = aliased(Message)
    return select(own.id).where(own.id == col(MediaFile.message_id), *where(own)).exists()


async def _detach(db: Database, org_id: uuid.UUID, received: Any, batch: int) -> None:
    """Set `message_id` null on the files left that `received` matches, `batch` per
    transaction: their messages are about to go, and the cascade must not take them."""
    while True:
        async with db.session(org_id) as session:
            see_erased(session)
            chosen = select(col(MediaFile.id)).where(received).limit(batch)
            result = await session.exec(
                update(MediaFile).where(col(MediaFile.id).in_(chosen)).values(message_id=None)
            )
        if int(result.rowcount) < batch:
            return


def unsent_files(created_before: datetime) -> Any:
    """Files older than `created_before` that no message carries or received: uploads
    never sent, and files of any origin whose last message went (`purge_media_of`)."""
    return and_(
        col(MediaFile.message_id).is_(None),
        col(MediaFile.created_at) < created_before,
        ~_carried(),
    )


async def delete_in_batches(
    db: Database, org_id: uuid.UUID, model: type[SQLModel], where: Any, batch: int
) -> int:
    """Delete `model` rows matching `where`, `batch` per transaction; how many went."""
    key = col(model.id)  # type: ignore[attr-defined]
    total = 0
    while True:
        async with db.session(org_id) as session:
            see_erased(session)
            if model in FEED_MODELS:
                await raise_feed_floor(await session.connection(), org_id)
            doomed = select(key).where(where).limit(batch)
            result = await session.exec(delete(model).where(key.in_(doomed)))
            gone = int(result.rowcount)
        total += gone
        if gone < batch:
            return total


async def blank_in_batches(
    db: Database,
    org_id: uuid.UUID,
    model: type[SQLModel],
    where: Any,
    columns: tuple[str, ...],
    batch: int,
) -> int:
    """Set `columns` of `model` rows matching `where` to null, `batch` per transaction; how
    many rows were blanked. `where` must stop matching a blanked row, or this never ends."""
    key = col(model.id)  # type: ignore[attr-defined]
    total = 0
    while True:
        async with db.session(org_id) as session:
            chosen = select(key).where(where).limit(batch)
            blank = dict.fromkeys(columns)
            result = await session.exec(update(model).where(key.in_(chosen)).values(blank))
            done = int(result.rowcount)
        total += done
        if done < batch:
            return total


async def purge_media(
    db: Database,
    store: MediaStore | None,
    org_id: uuid.UUID,
    where: Any,
    batch: int,
    *,
    wait: bool = False,
) -> int:
    """Delete media files matching `where` and their stored files, `batch` at a time.

    Each batch is first claimed (`_claim`: no longer READY, so sendMedia refuses it), then
    its stored files go, then its rows: a worker killed in between finds the claimed rows
    again (they still match `where`) and deleting a file already gone is a no-op, so no
    stored file outlives its row. Without a store (a test, a tool) only rows are deleted.
    `wait`: wait for a row a sendMedia holds instead of leaving it for the next sweep.
    """
    total = 0
    while True:
        async with db.session(org_id) as session:
            see_erased(session)
            chosen, rows = await _claim(session, where, batch, wait=wait)
        if store is not None:
            for _, key in rows:
                if key is not None:
                    await store.delete(key)
        if rows:
            async with db.session(org_id) as session:
                see_erased(session)
                ids = [row[0] for row in rows]
                await session.exec(delete(MediaFile).where(col(MediaFile.id).in_(ids)))
        total += len(rows)
        if chosen < batch:
            return total


async def _claim(
    session: AsyncSession, where: Any, batch: int, *, wait: bool = False
) -> tuple[int, list[tuple[uuid.UUID, str | None]]]:
    """Mark up to `batch` files matching `where` as being deleted (FAILED, `PURGED`); how
    many were looked at, and the (id, storage key) of those marked.

    sendMedia locks its file's row and needs it READY (`weflux.services.outbound`), so a
    file is either claimed here or carried by a committed message, never both. On
    PostgreSQL the rows are locked first (a file a sendMedia holds is skipped, for the next
    sweep, or waited for with `wait`) and `where` is asked again in a statement of its
    own: under READ COMMITTED it sees every message committed before the locks, which
    the first statement's snapshot may not. On SQLite the transaction holds the write
    lock from its start.
    """
    locked = (
        await session.exec(
            select(MediaFile.id)
            .where(where)
            .limit(batch)
            .with_for_update(skip_locked=not wait, of=MediaFile)
        )
    ).all()
    if not locked:
        return 0, []
    rows = (
        await session.exec(
            select(MediaFile.id, MediaFile.storage_key).where(col(MediaFile.id).in_(locked), where)
        )
    ).all()
    if rows:
        await session.exec(
            update(MediaFile)
            .where(col(MediaFile.id).in_([row[0] for row in rows]))
            .values(status=MediaStatus.FAILED, failure=PURGED, next_attempt_at=None)
        )
    return len(locked), [(row[0], row[1]) for row in rows]


def deletion_order() -> list[type[OrgScoped]]:
    """Every workspace-owned model, dependants before what they depend on.

    Data requests come last (with the workspace itself): the deletion's own request
    must outlive every batch, so a worker killed halfway picks the deletion up again.
    """
    by_table = {model.__tablename__: model for model in workspace_models()}
    ordered = [
        by_table[table.name]
        for table in reversed(SQLModel.metadata.sorted_tables)
        if table.name in by_table
    ]
    return [model for model in ordered if model is not DataRequest]


async def purge_workspace(
    db: Database,
    org_id: uuid.UUID,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress = _noop,
    finish: Callable[[AsyncSession], Awaitable[None]] | None = None,
    media: MediaStore | None = None,
) -> bool:
    """Delete every row of a workspace in batches, then the workspace; its members who
    belong to no workspace any more are deleted too, its stored media files as well.
    `finish` runs in the last transaction. False when the workspace is already gone."""
    async with db.session(org_id) as session:
        if await session.get(Organization, org_id) is None:
            return False
    models = deletion_order()
    for done, model in enumerate(models):
        if model is Membership:
            await _delete_memberships(db, org_id, batch)
        elif model is MediaFile:
            await purge_media(db, media, org_id, true(), batch)
        elif model is StoredObjectIntent:
            # Files written whose row never came (or is still to come): theirs go too.
            await intents.purge_workspace_intents(db, media, org_id, batch)
        else:
            await delete_in_batches(db, org_id, model, true(), batch)
        await progress(0.95 * (done + 1) / len(models))
    async with db.session(org_id) as session:
        see_erased(session)
        await session.exec(delete(DataRequest))
        await session.exec(delete(Organization).where(col(Organization.id) == org_id))
        await crossings.delete_workspace_alerts(session, org_id)
        if finish is not None:
            await finish(session)
    return True


async def _delete_memberships(db: Database, org_id: uuid.UUID, batch: int) -> None:
    """Memberships in batches, each with the accounts it leaves without a workspace."""
    while True:
        async with db.session(org_id) as session:
            rows = (
                await session.exec(select(Membership.id, Membership.user_id).limit(batch))
            ).all()
            if rows:
                ids = [row[0] for row in rows]
                await session.exec(delete(Membership).where(col(Membership.id).in_(ids)))
                await crossings.delete_orphan_users(session, {row[1] for row in rows})
        if len(rows) < batch:
            return
