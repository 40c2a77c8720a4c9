"""The team's tools in the inbox: labels, private notes, canned replies."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, Text, text
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class Label(OrgScoped, table=True):
    """A workspace-wide tag for conversations (ADMIN and MANAGER manage them)."""

    __tablename__ = "labels"
    __table_args__ = (Index(None, "org_id", "name"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(max_length=64, nullable=False)
    color: str = Field(max_length=7, nullable=False)  # "#rrggbb", lower case
    created_at: datetime = created_at_field()


class ConversationLabel(OrgScoped, table=True):
    """A label on a conversation (once); gone with either.

    It has an `id` of its own like every workspace-owned row (batch deletion goes by id).
    `last_message_at` is its conversation's, copied by the database (migration 0030's
    triggers, whatever the writer), so a label's page walks the list's order here.
    """

    __tablename__ = "conversation_labels"
    __table_args__ = (
        Index(
            "uq_conversation_labels_conversation_id_label_id",
            "conversation_id",
            "label_id",
            unique=True,
        ),
        Index(None, "org_id", "label_id", "conversation_id"),
        # A label's conversations in the inbox list's order (weflux.models.inbox says why
        # each engine's differs), walked from a page's cursor (migration 0030).
        Index(
            "ix_conversation_labels_inbox_order",
            "org_id",
            "label_id",
            text("last_message_at DESC NULLS LAST"),
            text("conversation_id DESC"),
        ).ddl_if(dialect="postgresql"),
        Index(None, "org_id", "label_id", "last_message_at", "conversation_id").ddl_if(
            dialect="sqlite"
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID = Field(
        foreign_key="conversations.id", nullable=False, ondelete="CASCADE"
    )
    label_id: uuid.UUID = Field(foreign_key="labels.id", nullable=False, ondelete="CASCADE")
    last_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Note(OrgScoped, table=True):
    """A private note of the team on a conversation: never sent to WhatsApp."""

    __tablename__ = "notes"
    __table_args__ = (Index(None, "org_id", "conversation_id", "id"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID = Field(
        foreign_key="conversations.id", nullable=False, ondelete="CASCADE"
    )
    author_membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    text: str = Field(sa_type=Text, nullable=False)
    created_at: datetime = created_at_field()


class CannedReply(OrgScoped, table=True):
    """A saved answer, found by its shortcut (unique in the workspace)."""

    __tablename__ = "canned_replies"
    __table_args__ = (
        Index("uq_canned_replies_org_id_shortcut", "org_id", "shortcut", unique=True),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    shortcut: str = Field(max_length=64, nullable=False)
    text: str = Field(sa_type=Text, nullable=False)
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()
