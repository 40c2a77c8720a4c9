"""Conversations that left someone's view, kept in the workspace's change feed."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index
from sqlmodel import Field

from weflux.models.base import OrgScoped, created_at_field, new_id
from weflux.models.inbox import FEED_COLUMN


class RemovalReason(enum.StrEnum):
    """Why a conversation left a view (`conversation_removals.reason`)."""

    REASSIGNED = "reassigned"  # assigned to someone: `member_id` (None: every Agent) lost it
    ERASED = "erased"  # its contact was erased: everyone who saw it lost it
    ROLE_NARROWED = "role_narrowed"  # `member_id` became an Agent: others' conversations


class ConversationRemoval(OrgScoped, table=True):
    """One removal, at a position of the workspace's change feed (`conversationRemoved(after:)`).

    Holds ids only. `member_id` is who lost the view: a reassignment's previous assignee
    (None: it was unassigned, so every Agent but the new assignee), the erased
    conversation's assignee (None: unassigned; Admins and Managers lose it too), or the
    member whose role was narrowed (`conversation_id` None: expanded at replay time to the
    conversations assigned to others then). The position comes from the same counter as
    `Conversation.update_seq` (weflux.auth.scoping, migration 0020).
    """

    __tablename__ = "conversation_removals"
    __table_args__ = (Index(None, "org_id", "update_seq"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    conversation_id: uuid.UUID | None = Field(default=None)
    member_id: uuid.UUID | None = Field(default=None)
    reason: str = Field(max_length=16, nullable=False)  # a RemovalReason
    created_at: datetime = created_at_field()
    update_seq: int = Field(default=None, sa_type=BigInteger, sa_column_kwargs=FEED_COLUMN)
