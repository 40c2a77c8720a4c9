"""Processing stored webhook events: contacts, conversations, messages, statuses, health.

One transaction per event whatever its size, in a session that names the event
(`db.session(webhook_event=…)`: on PostgreSQL a transaction sees only the webhook event
it names). Routing by `phone_number_id` (messages, statuses) or WABA id (management
fields) is the one thing here that crosses workspaces: it asks
`crossings.webhook_routes` for the live numbers concerned, ids only. Each workspace's
share of the event is then written with the session narrowed to that workspace
(`use_workspace`), so the scoping layer and row-level security apply as everywhere
else. Reads and writes are batched: the number of SQL statements does not grow with
the number of messages in the event.

Idempotent: a redelivered message (same wamid) or status is a no-op; statuses only
move forward. Anything the parser does not understand stays in `webhook_events`.
A failure is recorded on the event and retried by `weflux.services.webhook_queue`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, event, insert, or_, select
from sqlalchemy import update as update_of
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col
from sqlmodel import select as sqlmodel_select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.crossings import Route
from weflux.auth.scoping import (
    ScopedSession,
    core_scope,
    core_scope_params,
    reserve_feed_positions,
    use_workspace,
    with_feed_highest,
)
from weflux.config import Settings
from weflux.db import Database
from weflux.media.kinds import MEDIA_KINDS, normal_mime_type
from weflux.models import (
    AccountStatus,
    Contact,
    Conversation,
    ConversationStatus,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    Message,
    MessageDirection,
    MessageStatus,
    TemplateStatusEvent,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
    contact_reactor,
    moves_forward,
    new_id,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services import folding, reactions, templates
from weflux.services.channel_cache import ChannelCache
from weflux.services.contacts import record_profile_name
from weflux.services.outbound import opt_change
from weflux.sql_lists import fixed_lists
from weflux.sqlite_driver import inline
from weflux.whatsapp.parser import (
    AccountUpdate,
    InboundMessage,
    ParsedWebhook,
    QualityUpdate,
    StatusUpdate,
    TemplateStatusUpdate,
    parse_webhook,
)

log = logging.getLogger(__name__)


_STATUS = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "played": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}
_ACCOUNT_EVENTS = {
    "ACCOUNT_RESTRICTION": AccountStatus.RESTRICTED,
    "ACCOUNT_VIOLATION": AccountStatus.FLAGGED,
    "DISABLED_UPDATE": AccountStatus.BANNED,
    "ACCOUNT_DELETED": AccountStatus.BANNED,
    "ACCOUNT_OFFBOARDED": AccountStatus.BANNED,
    "ACCOUNT_RECONNECTED": AccountStatus.CONNECTED,
}


@dataclass
class _Share:
    """The part of one event that concerns one workspace."""

    messages: list[tuple[InboundMessage, Route]] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    templates: list[TemplateStatusUpdate] = field(default_factory=list)
    quality: list[tuple[QualityUpdate, list[Route]]] = field(default_factory=list)
    account: list[tuple[AccountUpdate, list[Route]]] = field(default_factory=list)


def _digits(value: str | None) -> str:
    return "".join(ch for ch in value or "" if ch.isdigit())


def _route(parsed: ParsedWebhook, routes: Iterable[Route]) -> dict[uuid.UUID, _Share]:
    """Which workspace each part belongs to.

    A number is live in one workspace at most (a unique index), so messages and statuses
    go to its owner. A business account may be shared by several workspaces, each
    having shown Meta lists its number there (weflux.services.channels): its template
    and account updates reach all of them, a quality update the number it names.
    """
    by_phone: dict[str, Route] = {}
    by_waba: dict[str, list[Route]] = defaultdict(list)
    for route in routes:
        by_phone[route.phone_number_id] = route
        by_waba[route.business_account_id].append(route)
    shares: dict[uuid.UUID, _Share] = defaultdict(_Share)
    for message in parsed.messages:
        owner = by_phone.get(message.phone_number_id)
        if owner is None:
            log.warning(
                "webhook message dropped: no live channel has its phone_number_id",
                extra={"phone": message.phone_number_id},
            )
            continue
        shares[owner.org_id].messages.append((message, owner))
    for status in parsed.statuses:
        owner = by_phone.get(status.phone_number_id)
        if owner is None:
            log.warning(
                "webhook status dropped: no live channel has its phone_number_id",
                extra={"phone": status.phone_number_id},
            )
            continue
        shares[owner.org_id].statuses.append(status)
    for template in parsed.template_updates:
        for org_id in {a.org_id for a in by_waba.get(template.waba_id, [])}:
            shares[org_id].templates.append(template)
    for quality in parsed.quality_updates:
        targets = [
            a
            for a in by_waba.get(quality.waba_id, [])
            if not quality.display_phone_number
            or _digits(a.display_phone_number) == _digits(quality.display_phone_number)
        ]
        if not targets:
            log.warning(
                "webhook quality update dropped: no live channel of its business account "
                "has its display number",
                extra={"waba": quality.waba_id},
            )
        for group in _by_workspace(targets):
            shares[group[0].org_id].quality.append((quality, group))
    for update in parsed.account_updates:
        targets = by_waba.get(update.waba_id, [])
        if not targets:
            log.warning(
                "webhook account update dropped: no live channel has its business account",
                extra={"waba": update.waba_id},
            )
        for group in _by_workspace(targets):
            shares[group[0].org_id].account.append((update, group))
    return shares


def _by_workspace(routes: Iterable[Route]) -> list[list[Route]]:
    groups: dict[uuid.UUID, list[Route]] = defaultdict(list)
    for route in routes:
        groups[route.org_id].append(route)
    return list(groups.values())


def _contact_key(message: InboundMessage) -> tuple[str | None, str | None]:
    profile = message.contact
    user_id = message.from_user_id or (profile.user_id if profile else None)
    wa_id = message.from_wa_id or (profile.wa_id if profile else None)
    return user_id, wa_id


_CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[attr-defined]
_MESSAGES: Table = Message.__table__  # type: ignore[attr-defined]
_MEDIA_FILES: Table = MediaFile.__table__  # type: ignore[attr-defined]

# Inbound messages are written with Core statements built once (their compiled forms are
# reused): no ORM instance, no unit of work (issue 11). Reads and updates are confined by
# `core_scope` and run on the session's connection; INSERTs go through the session, whose
# scoping hook checks (and fills) each row's workspace. On SQLite the conversations and
# messages take their feed positions as a flush would (`reserve_feed_positions`), on
# PostgreSQL the trigger sets them. Nothing listens to ORM events of these models
# (`grep -rn listens_for weflux/`: the feed hooks of weflux.auth.scoping, replaced here,
# and the channel cache, which hears only `whatsapp_accounts`).

# The stored senders (by `user_id` or `wa_id`) and their conversations, in one statement:
# a contact with two numbers' conversations comes twice. Each branch of the OR repeats
# `erased_at IS NULL`, the condition of the partial unique indexes on (org_id, user_id) and
# (org_id, wa_id): without it SQLite's planner cannot use them for an OR and reads every
# contact of the workspace by `ix_contacts_org_id_name`. With it: a unique-index lookup
# per id, the workspace's highest feed position by its covering indexes, and the
# contacts' conversations by the unique (org_id, contact_id, account_id): bounded by the
# event's senders, so it may run inline (weflux.sqlite_driver; with many senders, past
# INLINE_MAX_PARAMETERS, it takes its hand-off).
# Run with `fixed_lists` (one parameter per id, a compiled form per list length: no SQL
# re-rendered per execution).
_SENDERS = (
    select(
        _CONTACTS.c.id,
        _CONTACTS.c.user_id,
        _CONTACTS.c.wa_id,
        _CONTACTS.c.username,
        _CONTACTS.c.name,
        _CONTACTS.c.profile_name,
        _CONTACTS.c.name_set_by_team,
        _CONTACTS.c.phone_number,
        _CONTACTS.c.opted_out,
        _CONTACTS.c.opted_out_at,
        _CONTACTS.c.updated_at,
        _CONVERSATIONS.c.id.label("conversation_id"),
        _CONVERSATIONS.c.account_id,
        _CONVERSATIONS.c.last_message_id,
        _CONVERSATIONS.c.last_message_at,
        _CONVERSATIONS.c.last_inbound_at,
    )
    .select_from(
        _CONTACTS.outerjoin(
            _CONVERSATIONS,
            and_(
                _CONVERSATIONS.c.contact_id == _CONTACTS.c.id,
                core_scope(_CONVERSATIONS),
            ),
        )
    )
    .where(
        core_scope(_CONTACTS),
        or_(
            and_(
                _CONTACTS.c.user_id.in_(bindparam("user_ids", expanding=True)),
                _CONTACTS.c.erased_at.is_(None),
            ),
            and_(
                _CONTACTS.c.wa_id.in_(bindparam("wa_ids", expanding=True)),
                _CONTACTS.c.erased_at.is_(None),
            ),
        ),
    )
)
# SQLite: the same, with the workspace's highest feed position (one statement fewer).
_SENDERS_AND_FEED = inline(with_feed_highest(_SENDERS))
# Inline on SQLite: the rows of one event (an executemany of more than INLINE_MAX_ROWS hops),
# each checked by primary and unique keys and foreign keys to one row.
_INSERT_CONTACTS = inline(insert(_CONTACTS))
_INSERT_CONVERSATIONS = inline(insert(_CONVERSATIONS))
_INSERT_MESSAGES = inline(insert(_MESSAGES))
_INSERT_MEDIA_FILES = inline(insert(_MEDIA_FILES))
# Inline on SQLite: one row by primary key per changed sender.
_UPDATE_CONTACTS = inline(
    update_of(_CONTACTS)
    .where(_CONTACTS.c.id == bindparam("contact"), core_scope(_CONTACTS))
    .values(
        {
            column: bindparam(column)
            for column in (
                "user_id",
                "wa_id",
                "username",
                "name",
                "profile_name",
                "phone_number",
                "opted_out",
                "opted_out_at",
                "updated_at",
            )
        }
    )
)


def _feed_update(table: Table, key: str, values: dict[str, Any]) -> dict[bool, Any]:
    """UPDATE of one row by id (parameter `key`), confined by `core_scope`; keyed by
    whether the engine is SQLite, where the row also takes its feed position (parameter
    `position`: `reserve_feed_positions`); PostgreSQL's trigger sets it there."""
    return {
        sqlite: update_of(table)
        .where(table.c.id == bindparam(key), core_scope(table))
        .values({**values, "update_seq": bindparam("position")} if sqlite else values)
        for sqlite in (True, False)
    }


# A known conversation's new messages: counted unread, the latest shown, reopened.
_UPDATE_CONVERSATIONS = _feed_update(
    _CONVERSATIONS,
    "conversation",
    {
        "unread_count": _CONVERSATIONS.c.unread_count + bindparam("added"),
        "status": case(
            (_CONVERSATIONS.c.status == ConversationStatus.RESOLVED, ConversationStatus.OPEN),
            else_=_CONVERSATIONS.c.status,
        ),
        "last_message_id": bindparam("last_message_id"),
        "last_message_at": bindparam("last_message_at"),
        "last_inbound_at": bindparam("last_inbound_at"),
        "updated_at": bindparam("updated_at"),
    },
)
# Inline on SQLite: one row by primary key per conversation (`core_scope` of conversations
# is two columns of that row).
_UPDATE_CONVERSATIONS = {sqlite: inline(u) for sqlite, u in _UPDATE_CONVERSATIONS.items()}


@dataclass(slots=True)
class _Sender:
    """A contact as the webhook reads and writes it (a plain copy: no ORM instance)."""

    id: uuid.UUID
    user_id: str | None
    wa_id: str | None
    username: str | None = None
    name: str | None = None
    profile_name: str | None = None
    name_set_by_team: bool = False
    phone_number: str | None = None
    opted_out: bool = False
    opted_out_at: datetime | None = None
    updated_at: datetime | None = None
    new: bool = False
    changed: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "wa_id": self.wa_id,
            "username": self.username,
            "name": self.name,
            "profile_name": self.profile_name,
            "phone_number": self.phone_number,
            "opted_out": self.opted_out,
            "opted_out_at": self.opted_out_at,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class _Thread:
    """A conversation as the webhook reads and writes it."""

    id: uuid.UUID
    contact_id: uuid.UUID
    account_id: uuid.UUID
    last_message_id: uuid.UUID | None = None
    last_message_at: datetime | None = None
    last_inbound_at: datetime | None = None
    new: bool = False
    added: int = 0


async def _lookup(
    connection: AsyncConnection,
    org_id: uuid.UUID,
    plain: Any,
    with_feed: Any,
    params: dict[str, Any],
) -> tuple[Sequence[Any], int | None]:
    """The rows of a lookup with fixed IN lists and, on SQLite, the workspace's highest
    feed position (`with_feed`: the same lookup with `with_feed_highest`, whose first row
    carries it; PostgreSQL numbers positions in a trigger)."""
    if connection.dialect.name == "postgresql":
        return (await connection.execute(*fixed_lists(plain, params))).all(), None
    statement, fixed = fixed_lists(with_feed, params | {"feed_org": org_id})
    rows = (await connection.execute(statement, fixed)).all()
    return rows, int(rows[0].feed_highest)


async def _senders(
    connection: AsyncConnection,
    org_id: uuid.UUID,
    scope: dict[str, Any],
    messages: Sequence[InboundMessage],
) -> tuple[list[_Sender], list[_Thread], int | None]:
    """The stored senders (by `user_id` or `wa_id`), their conversations and, on SQLite,
    the workspace's highest feed position."""
    keys = {_contact_key(m) for m in messages}
    params = {
        "user_ids": [u for u, _ in keys if u],
        "wa_ids": [w for _, w in keys if w],
        **scope,
    }
    rows, highest = await _lookup(connection, org_id, _SENDERS, _SENDERS_AND_FEED, params)
    contacts: dict[uuid.UUID, _Sender] = {}
    threads: list[_Thread] = []
    for row in rows:
        if row.id is None:
            continue  # SQLite's one row of the feed position alone
        if row.id not in contacts:
            contacts[row.id] = _Sender(
                id=row.id,
                user_id=row.user_id,
                wa_id=row.wa_id,
                username=row.username,
                name=row.name,
                profile_name=row.profile_name,
                name_set_by_team=row.name_set_by_team,
                phone_number=row.phone_number,
                opted_out=row.opted_out,
                opted_out_at=row.opted_out_at,
                updated_at=row.updated_at,
            )
        if row.conversation_id is not None:
            threads.append(
                _Thread(
                    id=row.conversation_id,
                    contact_id=row.id,
                    account_id=row.account_id,
                    last_message_id=row.last_message_id,
                    last_message_at=row.last_message_at,
                    last_inbound_at=row.last_inbound_at,
                )
            )
    return list(contacts.values()), threads, highest


def _contacts(
    messages: Sequence[InboundMessage], existing: Sequence[_Sender], now: datetime
) -> dict[tuple[str | None, str | None], _Sender]:
    """Find or create the senders: by `user_id` when known, else by `wa_id`."""
    by_user = {c.user_id: c for c in existing if c.user_id}
    by_wa = {c.wa_id: c for c in existing if c.wa_id}
    found: dict[tuple[str | None, str | None], _Sender] = {}
    for message in messages:
        key = _contact_key(message)
        if key in found:
            contact = found[key]
        else:
            user_id, wa_id = key
            contact_or_none = (by_user.get(user_id) if user_id else None) or (
                by_wa.get(wa_id) if wa_id else None
            )
            if contact_or_none is None:
                contact_or_none = _Sender(
                    id=new_id(),
                    user_id=user_id,
                    wa_id=wa_id,
                    phone_number=f"+{wa_id}" if wa_id else None,
                    updated_at=now,
                    new=True,
                )
                if user_id:
                    by_user[user_id] = contact_or_none
                if wa_id:
                    by_wa[wa_id] = contact_or_none
            contact = contact_or_none
            found[key] = contact
        profile = message.contact
        profile_name = profile.name if profile else None
        if profile_name and record_profile_name(contact, profile_name):
            contact.updated_at = now
            contact.changed = True
        username = message.from_username or (profile.username if profile else None)
        for attribute, value in (
            ("username", username),
            ("user_id", key[0]),
            ("wa_id", key[1]),
        ):
            if value and getattr(contact, attribute) != value:
                setattr(contact, attribute, value)
                contact.updated_at = now
                contact.changed = True
        if contact.wa_id and not contact.phone_number:
            contact.phone_number = f"+{contact.wa_id}"
            contact.changed = True
    return found


def _conversations(
    pairs: Iterable[tuple[uuid.UUID, uuid.UUID]], existing: Sequence[_Thread]
) -> dict[tuple[uuid.UUID, uuid.UUID], _Thread]:
    """One conversation per contact x number; found (`_senders`) or created."""
    found = {(c.contact_id, c.account_id): c for c in existing}
    for contact_id, account_id in pairs:
        if (contact_id, account_id) not in found:
            found[(contact_id, account_id)] = _Thread(
                id=new_id(), contact_id=contact_id, account_id=account_id, new=True
            )
    return found


def _media_file(
    org_id: uuid.UUID, message_id: uuid.UUID, message: InboundMessage, now: datetime
) -> dict[str, Any] | None:
    """The download job of a media message's file (weflux.media.download): due at once."""
    media = message.media
    if media is None or media.id is None or message.type not in MEDIA_KINDS:
        return None
    return {
        "id": new_id(),
        "org_id": org_id,
        "origin": MediaOrigin.INBOUND,
        "message_id": message_id,
        "kind": message.type,
        "wa_media_id": media.id,
        "mime_type": normal_mime_type(media.mime_type),
        "sha256": media.sha256,
        "caption": media.caption,
        "filename": media.filename,
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
    connection = await session.connection()
    scope = core_scope_params(session)
    now = utcnow()
    senders, their_conversations, highest = await _senders(
        connection, org_id, scope, [m for m, _ in fresh]
    )
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
        media_file = _media_file(org_id, message_id, message, now)
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
        if conversation.last_inbound_at is None or message.timestamp > conversation.last_inbound_at:
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
    if connection.dialect.name == "postgresql" and rows.count() <= folding.MAX_ROWS:
        _hold(session, rows)
        if reacted:
            await _send_held(session)  # the reactions' statements may read these messages
    else:
        await _send_separately(session, connection, org_id, rows, highest)
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
class _Rows:
    """One share's inbound writes as rows, built once (`_rows`) whatever the engine:
    SQLite sends them one statement per kind (`_send_separately`), PostgreSQL holds them
    back to fold them into one statement (`_hold`), but for a big batch (past
    `folding.MAX_ROWS`: sent as SQLite sends them)."""

    new_contacts: list[dict[str, Any]]
    changed_contacts: list[dict[str, Any]]
    new_conversations: list[dict[str, Any]]
    known_conversations: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    media_files: list[dict[str, Any]]

    def count(self) -> int:
        return (
            len(self.new_contacts)
            + len(self.changed_contacts)
            + len(self.new_conversations)
            + len(self.known_conversations)
            + len(self.messages)
            + len(self.media_files)
        )


def _rows(
    org_id: uuid.UUID,
    senders: Iterable[_Sender],
    threads: Iterable[_Thread],
    messages: list[dict[str, Any]],
    media_files: list[dict[str, Any]],
    now: datetime,
) -> _Rows:
    """The senders', conversations' and messages' rows, in the order of the flush they
    replace (known conversations in id order)."""
    distinct = {sender.id: sender for sender in senders}.values()
    threads = list(threads)
    return _Rows(
        new_contacts=[
            {"id": c.id, "org_id": org_id, **c.row(), "name_set_by_team": False, "created_at": now}
            for c in distinct
            if c.new
        ],
        changed_contacts=[
            {"contact": c.id, **c.row()} for c in distinct if c.changed and not c.new
        ],
        new_conversations=[
            {
                "id": t.id,
                "org_id": org_id,
                "contact_id": t.contact_id,
                "account_id": t.account_id,
                "status": ConversationStatus.OPEN,
                "unread_count": t.added,
                "last_message_id": t.last_message_id,
                "last_message_at": t.last_message_at,
                "last_inbound_at": t.last_inbound_at,
                "created_at": now,
                "updated_at": now,
            }
            for t in threads
            if t.new
        ],
        known_conversations=[
            {
                "conversation": t.id,
                "added": t.added,
                "last_message_id": t.last_message_id,
                "last_message_at": t.last_message_at,
                "last_inbound_at": t.last_inbound_at,
                "updated_at": now,
            }
            for t in sorted((t for t in threads if not t.new and t.added), key=lambda t: t.id)
        ],
        messages=messages,
        media_files=media_files,
    )


async def _send_separately(
    session: AsyncSession,
    connection: AsyncConnection,
    org_id: uuid.UUID,
    rows: _Rows,
    highest: int | None,
) -> None:
    """A statement per kind of change, whatever the number of rows; on SQLite each row of
    the feed with the position the flush would have given it (PostgreSQL's trigger sets
    them). INSERTs through the
    session (their workspace checked), UPDATEs on its connection with `core_scope`."""
    scope = core_scope_params(session)
    if rows.new_contacts:
        await session.exec(_INSERT_CONTACTS, params=rows.new_contacts)
    if rows.changed_contacts:
        await connection.execute(_UPDATE_CONTACTS, [row | scope for row in rows.changed_contacts])
    sqlite = connection.dialect.name != "postgresql"
    feed = (rows.new_conversations, rows.known_conversations, rows.messages)
    positions = iter(await reserve_feed_positions(connection, org_id, sum(map(len, feed)), highest))
    if rows.new_conversations:
        if sqlite:
            for row in rows.new_conversations:
                row["update_seq"] = next(positions)
        await session.exec(_INSERT_CONVERSATIONS, params=rows.new_conversations)
    if rows.known_conversations:
        updates = [row | scope for row in rows.known_conversations]
        if sqlite:
            for row in updates:
                row["position"] = next(positions)
        await connection.execute(_UPDATE_CONVERSATIONS[sqlite], updates)
    if rows.messages:
        if sqlite:
            for row in rows.messages:
                row["update_seq"] = row["created_seq"] = next(positions)
        await session.exec(_INSERT_MESSAGES, params=rows.messages)
    if rows.media_files:
        await session.exec(_INSERT_MEDIA_FILES, params=rows.media_files)


# session.info (PostgreSQL): the writes held back to be sent as one statement
# (weflux.services.folding), with the event's own row when it is stored in the same
# transaction (`store_and_process`). Whatever runs a statement of its own after them
# sends them first (`_send_held`); a commit with writes still held is refused.
_HELD_KEY = "weflux.ingest.held"


def _hold(session: AsyncSession, rows: _Rows) -> None:
    """PostgreSQL: hold `rows` back, to fold them with what follows into one statement.

    The feed trigger numbers the parts in the order PostgreSQL runs them: conversations
    before their messages, as the flush did."""
    writes: folding.Writes = session.sync_session.info.setdefault(_HELD_KEY, folding.Writes())
    writes.add(folding.Insert(_CONTACTS, rows.new_contacts))
    writes.add(folding.Update(_UPDATE_CONTACTS, rows.changed_contacts))
    writes.add(folding.Insert(_CONVERSATIONS, rows.new_conversations))
    writes.add(folding.Update(_UPDATE_CONVERSATIONS[False], rows.known_conversations))
    writes.add(folding.Insert(_MESSAGES, rows.messages))
    writes.add(folding.Insert(_MEDIA_FILES, rows.media_files))


async def _send_held(session: AsyncSession, first: folding.Insert | None = None) -> bool:
    """Send the writes held back (after `first`, an INSERT, in the same statement) as one
    statement; whether there were any (else nothing is sent, not even `first`)."""
    writes: folding.Writes | None = session.sync_session.info.pop(_HELD_KEY, None)
    if writes is None or not writes.parts:
        return False
    await folding.send(session, writes, core_scope_params(session), first)
    return True


@event.listens_for(ScopedSession, "before_commit")
def _nothing_held(session: Any) -> None:
    writes = session.info.get(_HELD_KEY)
    if writes is not None and writes.parts:
        raise RuntimeError("ingest: a commit with writes still held back (call _send_held)")


def _callback_id(status: StatusUpdate) -> uuid.UUID | None:
    try:
        return uuid.UUID(status.biz_opaque_callback_data or "")
    except ValueError:
        return None


# Statuses move outbound messages forward with Core statements built once, as inbound
# messages are written: one select of the columns needed, one UPDATE (executemany) of the
# changed rows, both confined by `core_scope` on the session's connection. On SQLite the
# select carries the workspace's highest feed position and each changed message takes the
# next one as the flush did (in id order; `update_seq` only, `created_seq` is its
# insertion); on PostgreSQL the trigger sets it. The transaction holds the feed lock from
# `use_workspace` (SQLite: the write lock), so nobody changes these rows meanwhile.
#
# The lookup comes in two shapes, each built once: by wamid alone (the usual case: no
# status carries our callback data), and by wamid or id. One shape with an empty id list
# (`wa_message_id IN (…) OR id IN (<empty>)`) read every message of the workspace on
# SQLite: its planner cannot split an OR with an empty branch over two indexes
# (tests/services/test_status_plans.py).
_OUTBOUND_COLUMNS = (
    _MESSAGES.c.id,
    _MESSAGES.c.conversation_id,
    _MESSAGES.c.type,
    _MESSAGES.c.status,
    _MESSAGES.c.status_updated_at,
    _MESSAGES.c.wa_message_id,
    _MESSAGES.c.error_code,
    _MESSAGES.c.error_title,
)
_BY_WAMID = _MESSAGES.c.wa_message_id.in_(bindparam("wamids", expanding=True))
# Keyed by whether the statuses carry callback ids.
_OUTBOUND = {
    by_id: select(*_OUTBOUND_COLUMNS).where(
        core_scope(_MESSAGES),
        _MESSAGES.c.direction == MessageDirection.OUTBOUND,
        or_(_BY_WAMID, _MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
        if by_id
        else _BY_WAMID,
    )
    for by_id in (False, True)
}
# Inline on SQLite: the messages by the unique (org_id, wa_message_id) and the primary key
# (the `ids` branch: a multi-index OR), the erased conversations of `core_scope` by the
# covering partial `ix_conversations_erased` (few), the workspace's highest feed position
# by its covering indexes: bounded by the webhook's statuses (past INLINE_MAX_PARAMETERS,
# the hand-off).
_OUTBOUND_AND_FEED = {
    by_id: inline(with_feed_highest(statement)) for by_id, statement in _OUTBOUND.items()
}
_STATUS_COLUMNS = ("status", "status_updated_at", "wa_message_id", "error_code", "error_title")


# Inline on SQLite: one row by primary key per changed message (`core_scope`'s erased
# conversations by `ix_conversations_erased`, as above; more than INLINE_MAX_ROWS rows hop).
_UPDATE_STATUSES = {
    sqlite: inline(u)
    for sqlite, u in _feed_update(
        _MESSAGES, "message", {column: bindparam(column) for column in _STATUS_COLUMNS}
    ).items()
}


@dataclass(slots=True)
class _Outbound:
    """An outbound message as a status webhook reads and writes it."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    type: str
    status: MessageStatus
    status_updated_at: datetime | None
    wa_message_id: str | None
    error_code: int | None
    error_title: str | None

    def row(self) -> dict[str, Any]:
        return {"message": self.id, **{c: getattr(self, c) for c in _STATUS_COLUMNS}}


async def _outbound(
    connection: AsyncConnection,
    org_id: uuid.UUID,
    scope: dict[str, Any],
    statuses: Sequence[StatusUpdate],
) -> tuple[list[_Outbound], int | None]:
    """The outbound messages the statuses name (by wamid or callback data) and, on
    SQLite, the workspace's highest feed position."""
    params = {
        "wamids": list({s.wa_message_id for s in statuses}),
        "ids": list({cid for s in statuses if (cid := _callback_id(s)) is not None}),
        **scope,
    }
    by_id = bool(params["ids"])
    rows, highest = await _lookup(
        connection, org_id, _OUTBOUND[by_id], _OUTBOUND_AND_FEED[by_id], params
    )
    found = [
        _Outbound(
            id=row.id,
            conversation_id=row.conversation_id,
            type=row.type,
            status=row.status,
            status_updated_at=row.status_updated_at,
            wa_message_id=row.wa_message_id,
            error_code=row.error_code,
            error_title=row.error_title,
        )
        for row in rows
        if row.id is not None  # SQLite's one row of the feed position alone
    ]
    return found, highest


async def _apply_statuses(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, statuses: Sequence[StatusUpdate]
) -> None:
    """Move outbound messages forward (never back), matched by wamid or callback data."""
    connection = await session.connection()
    scope = core_scope_params(session)
    rows, highest = await _outbound(connection, org_id, scope, statuses)
    by_wamid = {m.wa_message_id: m for m in rows if m.wa_message_id}
    by_id = {m.id: m for m in rows}
    changed: dict[uuid.UUID, _Outbound] = {}
    for status in sorted(statuses, key=lambda s: s.timestamp):
        new = _STATUS.get(status.status)
        callback = _callback_id(status)
        message = by_wamid.get(status.wa_message_id) or (by_id.get(callback) if callback else None)
        if message is None or new is None:
            continue
        if message.wa_message_id is None:
            message.wa_message_id = status.wa_message_id  # the send response was lost
            by_wamid[status.wa_message_id] = message
            changed[message.id] = message
        if not moves_forward(message.status, new):
            continue
        message.status = new
        message.status_updated_at = status.timestamp
        if new == MessageStatus.FAILED and status.errors:
            error = status.errors[0]
            message.error_code = error.code
            message.error_title = (error.title or error.message or "")[:500] or None
        changed[message.id] = message
    if not changed:
        return
    # In id order, as the flush wrote (and, on SQLite, numbered) them.
    updates = [m.row() | scope for m in sorted(changed.values(), key=lambda m: m.id)]
    sqlite = connection.dialect.name != "postgresql"
    if sqlite:
        positions = await reserve_feed_positions(connection, org_id, len(updates), highest)
        for row, position in zip(updates, positions, strict=True):
            row["position"] = position
    await connection.execute(_UPDATE_STATUSES[sqlite], updates)
    for message in changed.values():
        publish_after_commit(
            session,
            broker,
            org_id,
            EventName.MESSAGE_UPDATED,
            id=message.id,
            conversation_id=message.conversation_id,
        )
        if message.type == "reaction" and message.status == MessageStatus.FAILED:
            # Rare: the ORM row, as the UPDATE left it.
            failed = await session.get(Message, message.id, populate_existing=True)
            if failed is not None:
                await reactions.undo_failed_reaction(session, broker, failed)


async def _account_changes(
    session: AsyncSession, broker: Broker, org_id: uuid.UUID, share: _Share
) -> None:
    if not share.quality and not share.account:
        return
    ids = {r.account_id for _, group in (*share.quality, *share.account) for r in group}
    loaded = {
        a.id: a
        for a in (
            await session.exec(
                sqlmodel_select(WhatsAppAccount).where(col(WhatsAppAccount.id).in_(ids))
            )
        ).all()
    }
    for quality, routes in share.quality:
        for account in (loaded[r.account_id] for r in routes if r.account_id in loaded):
            if quality.current_limit:
                account.messaging_limit_tier = quality.current_limit
            account.health_checked_at = None  # the colour is not in the webhook: re-read soon
            publish_after_commit(
                session, broker, org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
            )
    for update, routes in share.account:
        status = _ACCOUNT_EVENTS.get(update.event or "")
        if status is None:
            continue
        for account in (loaded[r.account_id] for r in routes if r.account_id in loaded):
            account.status = status
            detail = ", ".join(update.restriction_types) or update.violation_type
            account.status_detail = (
                (f"{update.event}: {detail}" if detail else update.event)[:500]
                if update.event
                else None
            )
            publish_after_commit(
                session, broker, org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
            )


async def _process_share(
    session: AsyncSession, broker: Broker, settings: Settings, org_id: uuid.UUID, share: _Share
) -> None:
    await _send_held(session)  # a previous share's, in its workspace
    # The feed lock first, in the scope's statement: the share writes several feed rows.
    await use_workspace(session, org_id, feed_lock=bool(share.messages or share.statuses))
    if share.messages:
        await _ingest_messages(session, broker, settings, org_id, share.messages)
        if share.statuses or share.templates or share.quality or share.account:
            await _send_held(session)
    if share.statuses:
        await _apply_statuses(session, broker, org_id, share.statuses)
    for template in share.templates:
        session.add(
            TemplateStatusEvent(
                org_id=org_id,
                business_account_id=template.waba_id,
                template_id=template.template_id,
                template_name=template.template_name,
                language=template.language,
                event=template.event,
                reason=template.reason,
            )
        )
        await templates.apply_status_update(session, template)
    await _account_changes(session, broker, org_id, share)
    await session.flush()


async def _routes(
    session: AsyncSession,
    parsed: ParsedWebhook,
    keyed_account_id: uuid.UUID | None,
    cache: ChannelCache | None,
) -> list[Route]:
    phones, wabas = parsed.phone_number_ids, parsed.waba_ids

    async def load() -> list[Route]:
        return await crossings.webhook_routes(session, phones, wabas, keyed_account_id)

    if cache is None:
        return await load()
    key = ("routes", frozenset(phones), frozenset(wabas), keyed_account_id)
    routes: list[Route] = await cache.get_or_load(key, load)
    return routes


# session.info: process without first asking which wamids are stored; a redelivered
# message then breaks the unique (org_id, wa_message_id) index, and the event is processed
# again, asking (`_optimistically`). Redeliveries are rare: most events save a statement.
_OPTIMISTIC_KEY = "weflux.ingest.optimistic"


async def _optimistically(attempt: Callable[[bool], Awaitable[None]]) -> None:
    """`attempt(True)`, and if it broke a unique index, `attempt(False)` (a redelivered
    message, or a sender another event created meanwhile: now read first)."""
    try:
        await attempt(True)
    except IntegrityError:
        await attempt(False)


async def process_event(
    db: Database,
    broker: Broker,
    settings: Settings,
    event_id: uuid.UUID,
    *,
    force: bool = False,
    cache: ChannelCache | None = None,
) -> bool:
    """Process one stored event in one transaction; whether it was processed now."""
    processed = False

    async def attempt(optimistic: bool) -> None:
        nonlocal processed
        async with db.session(webhook_event=event_id) as session:
            session.sync_session.info[_OPTIMISTIC_KEY] = optimistic and not force
            event = (
                await session.exec(
                    sqlmodel_select(WebhookEvent)
                    .where(WebhookEvent.id == event_id)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if event is None or (event.status == WebhookEventStatus.PROCESSED and not force):
                return
            note = await _apply(session, broker, settings, event.body, event.account_id, cache)
            await _send_held(session)
            if note is not None:
                event.last_error = note
            event.status = WebhookEventStatus.PROCESSED
            event.attempts += 1
            event.processed_at = utcnow()
            event.next_attempt_at = None
            processed = True

    await _optimistically(attempt)
    return processed


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A verified webhook as received, before any row of it exists (a plain object: the
    hot path builds no ORM instance for it, `store_and_process` INSERTs it with Core)."""

    body: bytes
    account_id: uuid.UUID | None
    id: uuid.UUID = field(default_factory=new_id)
    received_at: datetime = field(default_factory=utcnow)
    body_sha256: str = ""

    @classmethod
    def of(cls, body: bytes, account_id: uuid.UUID | None) -> ReceivedEvent:
        return cls(body, account_id, body_sha256=hashlib.sha256(body).hexdigest())


# One cached statement (its compiled form is reused): the event's row, already processed.
# Inline on SQLite: one row (its body at most the webhook's MAX_BODY_BYTES).
_WEBHOOK_EVENTS: Table = WebhookEvent.__table__  # type: ignore[attr-defined]
_INSERT_PROCESSED_EVENT = inline(insert(_WEBHOOK_EVENTS))


async def store_and_process(
    db: Database,
    broker: Broker,
    settings: Settings,
    event: ReceivedEvent,
    cache: ChannelCache | None = None,
) -> None:
    """Store a new verified event and process it, both in one transaction.

    The event is written already processed, so it is durable exactly when its effects
    are: the caller answers 200 once this returns, and on failure stores the event alone
    (`weflux.services.webhook_queue.store`) before answering. One transaction instead of
    two, and no reading back of the row just written (issue 11).
    """

    async def attempt(optimistic: bool) -> None:
        async with db.session(webhook_event=event.id) as session:
            session.sync_session.info[_OPTIMISTIC_KEY] = optimistic
            note = await _apply(session, broker, settings, event.body, event.account_id, cache)
            # After the share's writes (one Core INSERT, no ORM instance or flush); on
            # PostgreSQL the statement they are folded into.
            row = {
                "id": event.id,
                "received_at": event.received_at,
                "account_id": event.account_id,
                "body": event.body,
                "body_sha256": event.body_sha256,
                "status": WebhookEventStatus.PROCESSED,
                "attempts": 1,
                "last_error": note,
                "next_attempt_at": None,
                "processed_at": utcnow(),
            }
            if not await _send_held(session, folding.Insert(_WEBHOOK_EVENTS, [row])):
                connection = await session.connection()
                await connection.execute(_INSERT_PROCESSED_EVENT, row)

    await _optimistically(attempt)


def received_copy(event: ReceivedEvent) -> WebhookEvent:
    """A new, unprocessed row of the event as it was received."""
    return WebhookEvent(
        id=event.id,
        received_at=event.received_at,
        account_id=event.account_id,
        body=event.body,
        body_sha256=event.body_sha256,
    )


async def _apply(
    session: AsyncSession,
    broker: Broker,
    settings: Settings,
    raw: bytes,
    account_id: uuid.UUID | None,
    cache: ChannelCache | None,
) -> str | None:
    """Process an event's body; what the event's `last_error` should say (None: nothing)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        body = None
    parsed = parse_webhook(body)
    note = None
    if body is None or parsed.unknown:
        note = "not JSON" if body is None else f"{len(parsed.unknown)} part(s) not understood"
    routes: list[Route] = []
    if parsed.phone_number_ids or parsed.waba_ids:
        routes = await _routes(session, parsed, account_id, cache)
    shares = _route(parsed, routes)
    for org_id, share in shares.items():
        await _process_share(session, broker, settings, org_id, share)
    return note
