"""The team's tools in the inbox: labels, private notes, canned replies."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, Text, text
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id
from weflux.models.inbox import ConversationStatus

_UNASSIGNED = "assignee_membership_id IS NULL"
# The copy of `conversations.status` (its values only: no constraint of its own, the
# source has one).
_STATUS_COPY = Enum(
    ConversationStatus,
    name="conversation_label_status",
    native_enum=False,
    create_constraint=False,
    length=16,
)


class Label(OrgScoped, table=True):
    """A workspace-wide tag for conversations (ADMIN and MANAGER manage them)."""

    __tablename__ = "labels"
    __table_args__ = (Index(None, "org_id", "name"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(max_length=64, nullable=False)
    color: str = Field(max_length=7, nullable=False)  # "#rrggbb", lower case
    created_at: datetime = created_at_field()


# A label's conversations with a status or an assignee in the inbox list's order
# (migration 0032), as `_INBOX_ORDER_INDEXES` has each part of a page without a label
# (weflux.models.inbox): the label then one status, one assignee, both, nobody's (PostgreSQL:
# partial, as it takes no order from a column fixed by `IS NULL`), nobody's with a status.
# SQLite: the label then one status, one assignee (`IS NULL` seeks there too), both.
_LABELLED_ORDER_INDEXES = (
    *(
        Index(
            name,
            "org_id",
            "label_id",
            *columns,
            text("last_message_at DESC NULLS LAST"),
            text("conversation_id DESC"),
            postgresql_where=text(where) if where else None,
        ).ddl_if(dialect="postgresql")
        for name, columns, where in (
            ("ix_conversation_labels_inbox_order_status", ("status",), None),
            ("ix_conversation_labels_inbox_order_assignee", ("assignee_membership_id",), None),
            (
                "ix_conversation_labels_inbox_order_assignee_status",
                ("assignee_membership_id", "status"),
                None,
            ),
            ("ix_conversation_labels_inbox_order_unassigned", (), _UNASSIGNED),
            ("ix_conversation_labels_inbox_order_unassigned_status", ("status",), _UNASSIGNED),
        )
    ),
    *(
        Index(None, "org_id", "label_id", *columns, "last_message_at", "conversation_id").ddl_if(
            dialect="sqlite"
        )
        for columns in (
            ("status",),
            ("assignee_membership_id",),
            ("assignee_membership_id", "status"),
        )
    ),
)


class ConversationLabel(OrgScoped, table=True):
    """A label on a conversation (once); gone with either.

    It has an `id` of its own like every workspace-owned row (batch deletion goes by id).
    `last_message_at`, `status` and `assignee_membership_id` are its conversation's,
    copied by the database (migrations 0030 and 0032's triggers, whatever the writer), so
    a label's page walks the list's order here, with a status and an assignee too.
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
        *_LABELLED_ORDER_INDEXES,
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID = Field(
        foreign_key="conversations.id", nullable=False, ondelete="CASCADE"
    )
    label_id: uuid.UUID = Field(foreign_key="labels.id", nullable=False, ondelete="CASCADE")
    last_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Its conversation's status and assignee, copied as `last_message_at` is (migration
    # 0032): a label's page with a status or an assignee walks them here. Written by the
    # database only; an object of this class holds them as they were when it was read.
    status: ConversationStatus | None = Field(default=None, sa_type=_STATUS_COPY)
    assignee_membership_id: uuid.UUID | None = Field(default=None)


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
