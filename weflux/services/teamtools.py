"""The team's tools in the inbox: labels, private notes, canned replies.

Labels and canned replies are workspace-wide: ADMIN and MANAGER manage them
(Permission.MANAGE_TEAM_TOOLS, audited), every member uses them. Notes belong to a
conversation and are seen by whoever sees it (for an Agent the scoped session hides the
notes of conversations they cannot see); they are never sent to WhatsApp and go with
the conversation. Everything is read through the caller's scoped session, so another
workspace's ids answer NOT_FOUND like ids that do not exist.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import and_, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import feed_values, lock_feed
from weflux.errors import BadUserInput, Conflict, NotFound
from weflux.models import CannedReply, Conversation, ConversationLabel, Label, Note, utcnow
from weflux.pagination import Page, encode_cursor, page_of, page_size
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.audit import Action, RequestMeta, record
from weflux.services.conversations import get_conversation, search_term

MAX_LABEL_NAME = 64
MAX_LABELS_PER_CONVERSATION = 20
MAX_NOTE = 10_000
MAX_SHORTCUT = 64
MAX_CANNED_TEXT = 4096
COLOR = re.compile(r"#[0-9a-fA-F]{6}")
SHORTCUT = re.compile(r"[A-Za-z0-9_-]+")
MANAGE = "Only Admins and Managers manage labels and canned replies"

# The workspace-wide tools: managed alike (fetched, changed, audited), named differently.
Tool = TypeVar("Tool", Label, CannedReply)


def _invalid(field: str, message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": field, "message": message}])


def _text(value: str, field: str, limit: int) -> str:
    cleaned = value.strip()
    if not cleaned:
        raise _invalid(field, f"`{field}` must not be blank")
    if len(cleaned) > limit:
        raise _invalid(field, f"`{field}` is at most {limit} characters")
    return cleaned


def _color(value: str) -> str:
    if COLOR.fullmatch(value) is None:
        raise _invalid("color", '`color` must be "#rrggbb" (six hexadecimal digits)')
    return value.lower()


def _shortcut(value: str) -> str:
    if not value or len(value) > MAX_SHORTCUT or SHORTCUT.fullmatch(value) is None:
        message = f"`shortcut` is 1 to {MAX_SHORTCUT} letters, digits, `-` and `_` (no spaces)"
        raise _invalid("shortcut", message)
    return value


async def _get(session: AsyncSession, model: type[Tool], row_id: uuid.UUID, what: str) -> Tool:
    """The workspace's label or canned reply, or NOT_FOUND (another workspace's too)."""
    row = await session.get(model, row_id)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def _apply(row: Label | CannedReply, **values: str | None) -> bool:
    """Set each value given (None: the field stays); whether any differs from the row's."""
    changed = False
    for field, value in values.items():
        if value is not None and value != getattr(row, field):
            setattr(row, field, value)
            changed = True
    return changed


async def _audit(
    session: AsyncSession,
    principal: Principal,
    action: Action,
    row: Label | CannedReply,
    meta: RequestMeta | None,
    **details: Any,
) -> None:
    """The audit event of a change to a label or a canned reply (its type names the target)."""
    await record(
        session,
        action,
        actor=principal,
        target_type=type(row).__name__,
        target_id=row.id,
        meta=meta,
        details=details,
    )


# --- labels ------------------------------------------------------------------------


async def list_labels(session: AsyncSession) -> Sequence[Label]:
    return (await session.exec(select(Label).order_by(col(Label.name), col(Label.id)))).all()


def _label_details(label: Label) -> dict[str, Any]:
    return {"name": label.name, "color": label.color}


async def create_label(
    session: AsyncSession,
    principal: Principal,
    name: str,
    color: str,
    *,
    meta: RequestMeta | None = None,
) -> Label:
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    label = Label(name=_text(name, "name", MAX_LABEL_NAME), color=_color(color))
    session.add(label)
    await session.flush()
    await _audit(session, principal, Action.LABEL_CREATED, label, meta, **_label_details(label))
    return label


async def _touch_labelled(
    session: AsyncSession, broker: Broker | None, org_id: uuid.UUID, label_id: uuid.UUID
) -> int:
    """Every conversation the label is on takes a change-feed position (one UPDATE) and,
    with a broker, is announced (`conversationUpdated`): resumers and live subscribers see
    the label's change. How many conversations. The feed lock first: several rows change
    (weflux.auth.scoping.lock_feed)."""
    await lock_feed(session)
    dialect = (await session.connection()).dialect.name
    labelled = select(col(ConversationLabel.conversation_id)).where(
        col(ConversationLabel.label_id) == label_id
    )
    touched = (
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id).in_(labelled))
            .values(updated_at=utcnow(), **feed_values(dialect, org_id))
            .returning(col(Conversation.id))
        )
    ).all()
    if broker is not None:
        for (conversation_id,) in touched:
            publish_after_commit(
                session, broker, org_id, EventName.CONVERSATION_UPDATED, id=conversation_id
            )
    return len(touched)


async def update_label(
    session: AsyncSession,
    principal: Principal,
    label_id: uuid.UUID,
    *,
    name: str | None = None,
    color: str | None = None,
    meta: RequestMeta | None = None,
    broker: Broker | None = None,
) -> Label:
    """Rename or recolour a label; a None field stays as it is. A change touches every
    conversation the label is on (`_touch_labelled`): each shows the label as it is now."""
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    new_name = _text(name, "name", MAX_LABEL_NAME) if name is not None else None
    new_color = _color(color) if color is not None else None
    label = await _get(session, Label, label_id, "Label")
    changed = _apply(label, name=new_name, color=new_color)
    session.add(label)
    await session.flush()
    if changed:
        await _touch_labelled(session, broker, principal.org_id, label.id)
    await _audit(session, principal, Action.LABEL_UPDATED, label, meta, **_label_details(label))
    return label


async def delete_label(
    session: AsyncSession,
    principal: Principal,
    label_id: uuid.UUID,
    *,
    meta: RequestMeta | None = None,
    broker: Broker | None = None,
) -> uuid.UUID:
    """Delete a label, and with it its place on every conversation (each touched,
    `_touch_labelled`, before the label leaves it); answers its id."""
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    label = await _get(session, Label, label_id, "Label")
    await _touch_labelled(session, broker, principal.org_id, label.id)
    await session.exec(delete(ConversationLabel).where(col(ConversationLabel.label_id) == label.id))
    await session.delete(label)
    await session.flush()
    await _audit(session, principal, Action.LABEL_DELETED, label, meta, name=label.name)
    return label_id


async def set_conversation_labels(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    conversation_id: uuid.UUID,
    label_ids: Sequence[uuid.UUID],
) -> Conversation:
    """Replace the labels of a visible conversation (any member who may reply)."""
    principal.require(Permission.REPLY, "Your role cannot change conversations")
    wanted = list(dict.fromkeys(label_ids))
    if len(wanted) > MAX_LABELS_PER_CONVERSATION:
        raise _invalid(
            "labelIds", f"At most {MAX_LABELS_PER_CONVERSATION} labels on a conversation"
        )
    conversation = await get_conversation(session, conversation_id)
    if wanted:
        found = set((await session.exec(select(Label.id).where(col(Label.id).in_(wanted)))).all())
        if len(found) != len(wanted):
            raise NotFound("Label not found")
    current = set(
        (
            await session.exec(
                select(ConversationLabel.label_id).where(
                    col(ConversationLabel.conversation_id) == conversation.id
                )
            )
        ).all()
    )
    if current == set(wanted):
        return conversation
    gone = current - set(wanted)
    if gone:
        await session.exec(
            delete(ConversationLabel).where(
                col(ConversationLabel.conversation_id) == conversation.id,
                col(ConversationLabel.label_id).in_(gone),
            )
        )
    for label_id in wanted:
        if label_id not in current:
            session.add(ConversationLabel(conversation_id=conversation.id, label_id=label_id))
    conversation.updated_at = utcnow()
    session.add(conversation)
    await session.flush()
    publish_after_commit(
        session, broker, conversation.org_id, EventName.CONVERSATION_UPDATED, id=conversation.id
    )
    return conversation


# --- notes -------------------------------------------------------------------------


async def add_note(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    conversation_id: uuid.UUID,
    text: str,
) -> Note:
    """A private note on a visible conversation; never sent to WhatsApp."""
    principal.require(Permission.REPLY, "Your role cannot change conversations")
    cleaned = _text(text, "text", MAX_NOTE)
    conversation = await get_conversation(session, conversation_id)
    note = Note(
        conversation_id=conversation.id,
        author_membership_id=principal.membership_id,
        text=cleaned,
    )
    session.add(note)
    await session.flush()
    publish_after_commit(
        session,
        broker,
        conversation.org_id,
        EventName.NOTE_ADDED,
        id=note.id,
        conversation_id=conversation.id,
    )
    return note


async def list_notes(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    first: int | None = None,
    after: uuid.UUID | None = None,
) -> Page[Note]:
    """A conversation's notes, oldest first, keyset on the time-ordered id."""
    size = page_size(first)
    query = select(Note).where(col(Note.conversation_id) == conversation_id)
    if after is not None:
        query = query.where(col(Note.id) > after)
    rows = (await session.exec(query.order_by(col(Note.id)).limit(size + 1))).all()
    return page_of(rows, size, lambda row: encode_cursor(row.id), has_previous_page=bool(after))


# --- canned replies ----------------------------------------------------------------


async def list_canned_replies(
    session: AsyncSession, search: str | None = None
) -> Sequence[CannedReply]:
    """By shortcut; `search` matches a shortcut's prefix, or text holding all its words."""
    query = select(CannedReply)
    term = search_term(search)
    if term is not None:
        prefix = term.lstrip("/")
        words = term.split()
        query = query.where(
            or_(
                col(CannedReply.shortcut).istartswith(prefix, autoescape=True),
                and_(*(col(CannedReply.text).icontains(w, autoescape=True) for w in words)),
            )
        )
    return (await session.exec(query.order_by(col(CannedReply.shortcut)))).all()


def _duplicate() -> Conflict:
    message = "A canned reply with this shortcut exists already"
    return Conflict(message, details=[{"field": "shortcut", "message": message}])


async def _save_unique(session: AsyncSession, reply: CannedReply) -> None:
    with session.no_autoflush:  # the changed row is checked before it is written
        taken = (
            await session.exec(
                select(CannedReply.id).where(
                    col(CannedReply.shortcut) == reply.shortcut, col(CannedReply.id) != reply.id
                )
            )
        ).first()
    if taken is not None:
        raise _duplicate()
    session.add(reply)
    try:
        # A concurrent twin is caught by the unique index, not only by the look-up above.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise _duplicate() from None


async def create_canned_reply(
    session: AsyncSession,
    principal: Principal,
    shortcut: str,
    text: str,
    *,
    meta: RequestMeta | None = None,
) -> CannedReply:
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    reply = CannedReply(shortcut=_shortcut(shortcut), text=_text(text, "text", MAX_CANNED_TEXT))
    await _save_unique(session, reply)
    await _audit(
        session, principal, Action.CANNED_REPLY_CREATED, reply, meta, shortcut=reply.shortcut
    )
    return reply


async def update_canned_reply(
    session: AsyncSession,
    principal: Principal,
    reply_id: uuid.UUID,
    *,
    shortcut: str | None = None,
    text: str | None = None,
    meta: RequestMeta | None = None,
) -> CannedReply:
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    new_shortcut = _shortcut(shortcut) if shortcut is not None else None
    new_text = _text(text, "text", MAX_CANNED_TEXT) if text is not None else None
    reply = await _get(session, CannedReply, reply_id, "Canned reply")
    _apply(reply, shortcut=new_shortcut, text=new_text)
    reply.updated_at = utcnow()
    await _save_unique(session, reply)
    await _audit(
        session, principal, Action.CANNED_REPLY_UPDATED, reply, meta, shortcut=reply.shortcut
    )
    return reply


async def delete_canned_reply(
    session: AsyncSession,
    principal: Principal,
    reply_id: uuid.UUID,
    *,
    meta: RequestMeta | None = None,
) -> uuid.UUID:
    principal.require(Permission.MANAGE_TEAM_TOOLS, MANAGE)
    reply = await _get(session, CannedReply, reply_id, "Canned reply")
    await session.delete(reply)
    await session.flush()
    await _audit(
        session, principal, Action.CANNED_REPLY_DELETED, reply, meta, shortcut=reply.shortcut
    )
    return reply_id
