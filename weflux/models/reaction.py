"""Emoji reactions on messages: the contact's (from webhooks) and the team's (reactToMessage)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field

from weflux.models.base import OrgScoped, created_at_field, new_id


def contact_reactor(contact_id: uuid.UUID) -> str:
    """The `reactor` key of a contact's reactions."""
    return f"contact:{contact_id}"


def member_reactor(membership_id: uuid.UUID) -> str:
    """The `reactor` key of a member's reactions."""
    return f"member:{membership_id}"


class MessageReaction(OrgScoped, table=True):
    """One reactor's current emoji on one message, keyed by the message's wamid.

    Keyed by `target_wa_message_id`, not by our message id, so a reaction that arrives
    before the message it reacts to (webhooks are not ordered) is kept and shows on that
    message as soon as it arrives: nothing to re-link. One row per reactor and message
    (`reactor`: `contact:<id>` or `member:<id>`); a new emoji replaces the row's, an
    unreaction deletes it. `conversation_id` is the reactor's conversation: the scoping
    layer hides the row with it (Agents, erasure).
    """

    __tablename__ = "message_reactions"
    __table_args__ = (
        Index(
            "uq_message_reactions_org_id_target_reactor",
            "org_id",
            "target_wa_message_id",
            "reactor",
            unique=True,
        ),
        Index(None, "org_id", "conversation_id"),
        # The message retention's sweep of old reactions (migration 0027).
        Index(None, "org_id", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID = Field(
        foreign_key="conversations.id", nullable=False, ondelete="CASCADE"
    )
    target_wa_message_id: str = Field(max_length=128, nullable=False)
    reactor: str = Field(max_length=80, nullable=False)
    contact_id: uuid.UUID | None = Field(
        default=None, foreign_key="contacts.id", ondelete="CASCADE"
    )
    membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    emoji: str = Field(max_length=64, nullable=False)
    # When this emoji was set (a webhook's own time): an older webhook never wins.
    created_at: datetime = created_at_field()
