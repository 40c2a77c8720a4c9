"""Emoji reactions: the contact's arrive by webhook, the team's are sent (reactToMessage).

A reaction is not a message: it is one row of `message_reactions` per reactor and
message, keyed by the wamid it reacts to (weflux.models.reaction). A new emoji replaces
the reactor's previous one; an unreaction (empty emoji) is kept as a row with `emoji`
"" that no read shows, so that an older webhook delivered late (Meta does not order
them) never brings a removed reaction back. A reaction to a message we do not have
yet shows on that message once it arrives.

The team's reaction is recorded at once (the inbox shows it) and queued for the
delivery worker as an outbound `messages` row of type `reaction`: the outbox that sends
replies also sends it, in order with the conversation's other messages, with the same
retries. That row is never listed as a message (`Conversation.messages`, replays).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import emoji as emoji_data
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import feed_values
from weflux.errors import NotFound, OutsideServiceWindow
from weflux.models import (
    Conversation,
    Message,
    MessageDirection,
    MessageReaction,
    MessageStatus,
    MessageType,
    member_reactor,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.outbound import check_recipient, field_error, service_window_open

log = logging.getLogger(__name__)

# Meta refuses a reaction to a message older than this (error 131009).
REACTION_MAX_AGE = timedelta(days=30)
MAX_EMOJI_LENGTH = 32  # characters: the longest ZWJ family sequences are about 11


@dataclass(frozen=True, slots=True)
class ReactionChange:
    """One reactor's new emoji ("" for an unreaction) on the message of `target` (a wamid)."""

    target: str
    reactor: str
    conversation_id: uuid.UUID
    emoji: str
    at: datetime
    contact_id: uuid.UUID | None = None
    membership_id: uuid.UUID | None = None


def check_emoji(value: str) -> str:
    """The emoji to react with ("" removes); BAD_USER_INPUT unless one emoji or empty."""
    if value == "":
        return value
    if len(value) > MAX_EMOJI_LENGTH or not emoji_data.is_emoji(value):
        raise field_error("emoji", '`emoji` must be a single emoji, or "" to remove your reaction')
    return value


async def set_reactions(
    session: AsyncSession,
    broker: Broker,
    org_id: uuid.UUID,
    reactions: Sequence[ReactionChange],
) -> None:
    """Record reactions in bulk: the latest per reactor and message wins, an older never.

    Publishes `messageUpdated` for each target we have; two statements whatever the count.
    """
    if not reactions:
        return
    existing = (
        await session.exec(
            select(MessageReaction).where(
                col(MessageReaction.target_wa_message_id).in_({r.target for r in reactions}),
                col(MessageReaction.reactor).in_({r.reactor for r in reactions}),
            )
        )
    ).all()
    rows = {(row.target_wa_message_id, row.reactor): row for row in existing}
    changed: set[str] = set()
    for change in sorted(reactions, key=lambda r: r.at):
        row = rows.get((change.target, change.reactor))
        if row is None:
            row = MessageReaction(
                org_id=org_id,
                conversation_id=change.conversation_id,
                target_wa_message_id=change.target,
                reactor=change.reactor,
                contact_id=change.contact_id,
                membership_id=change.membership_id,
                emoji=change.emoji,
                created_at=change.at,
            )
            session.add(row)
            rows[(change.target, change.reactor)] = row
        elif change.at < row.created_at or row.emoji == change.emoji:
            continue  # an older webhook delivered late, or a redelivery
        else:
            row.emoji = change.emoji
            row.created_at = change.at
        changed.add(change.target)
    if not changed:
        return
    await session.flush()
    # The reacted messages take a feed position (messageUpdated(after:) replays them).
    dialect = (await session.connection()).dialect.name
    found = (
        await session.exec(
            update(Message)
            .where(col(Message.wa_message_id).in_(changed))
            .values(**feed_values(dialect, org_id, touch=True))
            .returning(col(Message.id), col(Message.conversation_id))
            .execution_options(synchronize_session=False)
        )
    ).all()
    for message_id, conversation_id in found:
        publish_after_commit(
            session,
            broker,
            org_id,
            EventName.MESSAGE_UPDATED,
            id=message_id,
            conversation_id=conversation_id,
        )


async def react_to_message(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    *,
    message_id: uuid.UUID,
    emoji: str,
) -> Message:
    """Set (or with "" remove) the caller's reaction to a message and queue it to WhatsApp.

    As sending a message: Permission.REPLY, NOT_FOUND unless the message's conversation is
    visible to the caller, OUTSIDE_SERVICE_WINDOW 24 hours after the contact last wrote
    (Meta sends reactions as any free-form message). BAD_USER_INPUT for anything but one
    emoji or "", for a message WhatsApp has no id of yet (a reply still QUEUED, say), and
    for one older than 30 days (Meta refuses those). Setting the emoji the caller already
    shows queues nothing (idempotent). Answers the message reacted to.
    """
    principal.require(Permission.REPLY, "Your role does not allow sending messages")
    emoji = check_emoji(emoji)
    target = await session.get(Message, message_id)
    if target is None or target.type == MessageType.REACTION:
        raise NotFound("Message not found")
    conversation = await session.get(Conversation, target.conversation_id)
    if conversation is None:
        raise NotFound("Message not found")
    if target.wa_message_id is None:
        raise field_error("messageId", "WhatsApp has no id of this message yet: wait for SENT")
    if utcnow() - target.created_at > REACTION_MAX_AGE:
        raise field_error("messageId", "WhatsApp allows reactions to messages of the last 30 days")
    await check_recipient(session, conversation)
    if not service_window_open(conversation):
        raise OutsideServiceWindow(
            "The customer has not written in the last 24 hours, so WhatsApp does not allow "
            "reactions now"
        )
    reactor = member_reactor(principal.membership_id)
    current = (
        await session.exec(
            select(MessageReaction.emoji).where(
                MessageReaction.target_wa_message_id == target.wa_message_id,
                MessageReaction.reactor == reactor,
            )
        )
    ).first()
    if (current or "") == emoji:
        return target
    now = utcnow()
    change = ReactionChange(
        target=target.wa_message_id,
        reactor=reactor,
        conversation_id=conversation.id,
        emoji=emoji,
        at=now,
        membership_id=principal.membership_id,
    )
    try:
        async with session.begin_nested():
            await set_reactions(session, broker, principal.org_id, [change])
    except IntegrityError:
        # The same member's concurrent first reaction to it committed first: theirs stands.
        log.info("concurrent reaction", extra={"message_id": str(target.id)})
        return target
    session.add(
        Message(
            org_id=principal.org_id,
            conversation_id=conversation.id,
            direction=MessageDirection.OUTBOUND,
            type=MessageType.REACTION,
            text=emoji or None,
            payload={"message_id": target.wa_message_id, "emoji": emoji, "target": str(target.id)},
            status=MessageStatus.QUEUED,
            sent_by_membership_id=principal.membership_id,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            status_updated_at=now,
        )
    )
    await session.flush()
    log.info("reaction queued", extra={"message_id": str(target.id)})
    return target


SHOWN_ON_WHATSAPP = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ)
LOOK_BACK = 50  # earlier reaction sends of the member in the conversation looked at


async def undo_failed_reaction(session: AsyncSession, broker: Broker, failed: Message) -> bool:
    """A member's reaction send that Meta finally refused (FAILED): their reaction shows
    again what WhatsApp shows, their last reaction to that message WhatsApp accepted
    (none: removed), and `messageUpdated` is published. Nothing when the member has
    reacted to it again since (that newer send stands). Whether it changed."""
    payload = failed.payload or {}
    target = payload.get("message_id")
    membership_id = failed.sent_by_membership_id
    if not isinstance(target, str) or membership_id is None:
        return False
    reactor = member_reactor(membership_id)
    shown = (
        await session.exec(
            select(MessageReaction).where(
                MessageReaction.target_wa_message_id == target,
                MessageReaction.reactor == reactor,
            )
        )
    ).first()
    if shown is None or shown.created_at != failed.created_at:
        return False
    earlier = (
        await session.exec(
            select(Message)
            .where(
                Message.conversation_id == failed.conversation_id,
                Message.type == MessageType.REACTION,
                Message.sent_by_membership_id == membership_id,
                col(Message.status).in_(SHOWN_ON_WHATSAPP),
                col(Message.created_at) < failed.created_at,
            )
            .order_by(col(Message.created_at).desc())
            .limit(LOOK_BACK)
        )
    ).all()
    previous = next(
        (
            str((m.payload or {}).get("emoji", ""))
            for m in earlier
            if (m.payload or {}).get("message_id") == target
        ),
        "",
    )
    change = ReactionChange(
        target=target,
        reactor=reactor,
        conversation_id=failed.conversation_id,
        emoji=previous,
        at=max(utcnow(), shown.created_at),
        membership_id=membership_id,
    )
    await set_reactions(session, broker, failed.org_id, [change])
    log.info("failed reaction undone", extra={"message_id": str(failed.id)})
    return True
