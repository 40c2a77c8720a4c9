"""A share's inbound messages: their senders, conversations, messages and media files."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from sqlmodel import col
from sqlmodel import select as sqlmodel_select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.crossings import Route
from weflux.auth.scoping import core_scope_params
from weflux.config import Settings
from weflux.media.kinds import MEDIA_KINDS, normal_mime_type
from weflux.models import (
    MediaOrigin,
    MediaStatus,
    Message,
    MessageDirection,
    MessageStatus,
    contact_reactor,
    new_id,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services import folding, reactions
from weflux.services.contacts import MAX_NAME
from weflux.services.ingest import pg_single
from weflux.services.ingest.senders import (
    _contact_key,
    _contacts,
    _conversations,
    _Sender,
    _senders,
    _Thread,
)
from weflux.services.ingest.writes import (
    _hold,
    _Rows,
    _rows,
    _send_held,
    _send_separately,
    send_event_row,
)
from weflux.services.outbound import opt_change
from weflux.whatsapp.parser import InboundMessage

# session.info: process without first asking which wamids are stored; a redelivered
# message then breaks the unique (org_id, wa_message_id) index, and the event is processed
# again, asking (`_optimistically`). Redeliveries are rare: most events save a statement.
_OPTIMISTIC_KEY = "weflux.ingest.optimistic"
# session.info: a queue's batch (`process.process_batch`). Its rows are sent a statement
# per kind (an executemany: one compiled and prepared form for any number of rows), not
# folded (a statement per count of rows: each new batch size compiled on the event loop
# the acknowledgements share and prepared on each connection; issue 11).
_BATCH_KEY = "weflux.ingest.batch"


def _media_file(
    org_id: uuid.UUID,
    message_id: uuid.UUID,
    sender_contact_id: uuid.UUID,
    message: InboundMessage,
    now: datetime,
) -> dict[str, Any] | None:
    """The download job of a media message's file (weflux.media.download): due at once.
    It names its sender, whose erasure deletes it wherever it was sent on."""
    media = message.media
    if media is None or media.id is None or message.type not in MEDIA_KINDS:
        return None
    return {
        "id": new_id(),
        "org_id": org_id,
        "origin": MediaOrigin.INBOUND,
        "message_id": message_id,
        "sender_contact_id": sender_contact_id,
        "kind": message.type,
        "wa_media_id": media.id,
        "mime_type": normal_mime_type(media.mime_type),
        "sha256": media.sha256,
        "caption": media.caption,
        # As sent (the download names its file safely), within its column's 255 characters.
        "filename": media.filename[:255] if media.filename else None,
        "status": MediaStatus.PENDING,
        "next_attempt_at": now,
        "created_at": now,
    }


def _media(message: InboundMessage) -> dict[str, Any] | None:
    media = message.media
    if media is None:
        return None
    values = {
        "id": media.id,
        "mime_type": media.mime_type,
        "sha256": media.sha256,
        "caption": media.caption,
        "filename": media.filename,
        "voice": media.voice,
        "animated": media.animated,
    }
    return {k: v for k, v in values.items() if v not in (None, False)}


def _payload(message: InboundMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {"raw": message.raw}
    if message.forwarded or message.frequently_forwarded:
        payload["forwarded"] = True
        payload["frequently_forwarded"] = message.frequently_forwarded
    if message.referral:
        payload["referral"] = message.referral
    if message.errors:
        payload["errors"] = [
            {"code": e.code, "title": e.title, "details": e.details} for e in message.errors
        ]
    return payload


async def _ingest_messages(
    session: AsyncSession,
    broker: Broker,
    settings: Settings,
    org_id: uuid.UUID,
    items: Sequence[tuple[InboundMessage, Route]],
) -> None:
    unique: dict[str, tuple[InboundMessage, Route]] = {}
    for message, account in items:
        unique.setdefault(message.wa_message_id, (message, account))
    known: set[str | None] = set()
    if not session.sync_session.info.get(_OPTIMISTIC_KEY):
        known = set(
            (
                await session.exec(
                    sqlmodel_select(Message.wa_message_id).where(
                        col(Message.wa_message_id).in_(list(unique))
                    )
                )
            ).all()
        )
    fresh = [(m, a) for wamid, (m, a) in unique.items() if wamid not in known]
    if not fresh:
        return
    postgresql = session.sync_session.get_bind().dialect.name == "postgresql"
    now = utcnow()
    # PostgreSQL, one message (not a reaction): the sender is found by the statement that
    # writes it (pg_single); the rows are built as for a new sender, with no statement.
    if postgresql and len(fresh) == 1 and fresh[0][0].type != "reaction":
        share = _Inbound.of(org_id, fresh, [], [], now, settings)
        _hold_single(session, broker, org_id, fresh[0], share.rows, now, settings)
        return
    # Begun, found, built and (but for what PostgreSQL folds) written in one greenlet, the
    # event's own row too on SQLite: each call of the async API takes a greenlet of its
    # own (issue 11).
    share = await session.run_sync(_found_and_sent, org_id, fresh, now, settings)
    if _folds(session.sync_session, share.rows):
        _hold(session, share.rows)
        if share.reacted:
            await _send_held(session)  # the reactions' statements may read these messages
    reacted, added, touched = share.reacted, share.rows.messages, share.touched
    await reactions.set_reactions(session, broker, org_id, reacted)
    for row in added:
        publish_after_commit(
            session,
            broker,
            org_id,
            EventName.MESSAGE_ADDED,
            id=row["id"],
            conversation_id=row["conversation_id"],
        )
    for conversation in touched.values():
        publish_after_commit(
            session, broker, org_id, EventName.CONVERSATION_UPDATED, id=conversation.id
        )


@dataclass(slots=True)
class _Inbound:
    """A share's inbound messages made rows: what to write, react and announce."""

    rows: _Rows
    reacted: list[reactions.ReactionChange]
    touched: dict[uuid.UUID, _Thread]

    @classmethod
    def of(
        cls,
        org_id: uuid.UUID,
        fresh: Sequence[tuple[InboundMessage, Route]],
        senders: Sequence[_Sender],
        their_conversations: Sequence[_Thread],
        now: datetime,
        settings: Settings,
    ) -> _Inbound:
        """The rows of `fresh`, with its senders and their conversations as found."""
        contacts = _contacts([m for m, _ in fresh], senders, now)
        pairs = {(contacts[_contact_key(m)].id, a.account_id): None for m, a in fresh}
        conversations = _conversations(pairs, their_conversations)
        touched: dict[uuid.UUID, _Thread] = {}
        added: list[dict[str, Any]] = []
        reacted: list[reactions.ReactionChange] = []
        media_files: list[dict[str, Any]] = []
        for message, account in sorted(fresh, key=lambda item: item[0].timestamp):
            contact = contacts[_contact_key(message)]
            conversation = conversations[(contact.id, account.account_id)]
            if message.type == "reaction":
                # Not a message: it attaches to the one it reacts to (weflux.services.reactions).
                if message.reaction_to_wa_message_id:
                    reacted.append(
                        reactions.ReactionChange(
                            target=message.reaction_to_wa_message_id,
                            reactor=contact_reactor(contact.id),
                            conversation_id=conversation.id,
                            emoji=message.reaction_emoji or "",
                            at=message.timestamp,
                            contact_id=contact.id,
                        )
                    )
                continue
            message_id = new_id()
            media_file = _media_file(org_id, message_id, contact.id, message, now)
            added.append(
                {
                    "id": message_id,
                    "org_id": org_id,
                    "conversation_id": conversation.id,
                    "direction": MessageDirection.INBOUND,
                    "type": message.type,
                    "text": message.text,
                    "media": _media(message),
                    "payload": _payload(message),
                    "status": MessageStatus.RECEIVED,
                    "wa_message_id": message.wa_message_id,
                    "reply_to_wa_message_id": message.reply_to_wa_message_id,
                    "media_file_id": media_file["id"] if media_file is not None else None,
                    "created_at": message.timestamp,
                }
            )
            if media_file is not None:
                media_files.append(media_file)
            if (
                conversation.last_message_at is None
                or message.timestamp >= conversation.last_message_at
            ):
                conversation.last_message_id = message_id
                conversation.last_message_at = message.timestamp
            if (
                conversation.last_inbound_at is None
                or message.timestamp > conversation.last_inbound_at
            ):
                conversation.last_inbound_at = message.timestamp
            conversation.added += 1
            touched[conversation.id] = conversation
            if message.type == "text":
                change = opt_change(message.text, settings)
                if change is not None and contact.opted_out != change:
                    contact.opted_out = change
                    contact.opted_out_at = now if change else None
                    contact.changed = True
        rows = _rows(org_id, contacts.values(), conversations.values(), added, media_files, now)
        return cls(rows, reacted, touched)


def _folds(session: Session, rows: _Rows) -> bool:
    """Whether a share's rows are held to be folded into one statement (PostgreSQL), not
    sent a statement per kind: not past `folding.MAX_ROWS`, nor for a queue's batch
    (`_BATCH_KEY`)."""
    return (
        session.get_bind().dialect.name == "postgresql"
        and rows.count() <= folding.MAX_ROWS
        and not session.info.get(_BATCH_KEY)
    )


def _found_and_sent(
    session: Session,
    org_id: uuid.UUID,
    fresh: Sequence[tuple[InboundMessage, Route]],
    now: datetime,
    settings: Settings,
) -> _Inbound:
    """In SQLAlchemy's greenlet (`run_sync`): the transaction begun if need be, the
    senders found, the rows built and, on SQLite (or past what PostgreSQL folds), sent a
    statement per kind, then the event's row if it is held (`hold_event_row`)."""
    connection = session.connection()
    scope = core_scope_params(session)
    senders, their_conversations, highest = _senders(
        connection, org_id, scope, [m for m, _ in fresh]
    )
    share = _Inbound.of(org_id, fresh, senders, their_conversations, now, settings)
    if not _folds(session, share.rows):
        _send_separately(session, connection, org_id, share.rows, highest)
        send_event_row(session)
    return share


def _hold_single(
    session: AsyncSession,
    broker: Broker,
    org_id: uuid.UUID,
    item: tuple[InboundMessage, Route],
    rows: _Rows,
    now: datetime,
    settings: Settings,
) -> None:
    """PostgreSQL: hold one message's rows (built as for a new sender) and what decides
    between them (pg_single), to send as one statement with what follows."""
    message, account = item
    user_id, wa_id = _contact_key(message)
    profile = message.contact
    (row,) = rows.messages
    pg_single.hold(
        session,
        pg_single.Single(
            broker=broker,
            org_id=org_id,
            message_id=row["id"],
            contact=rows.new_contacts[0],
            conversation=rows.new_conversations[0],
            message=row,
            media_file=rows.media_files[0] if rows.media_files else None,
            decide=pg_single.decide(
                user_id=user_id,
                wa_id=wa_id,
                username=message.from_username or (profile.username if profile else None),
                profile_name=profile.name[:MAX_NAME] if profile and profile.name else None,
                opted_out=opt_change(message.text, settings) if message.type == "text" else None,
                at=message.timestamp,
                now=now,
                message_id=row["id"],
                account_id=account.account_id,
            ),
        ),
    )
