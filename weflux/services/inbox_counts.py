"""The inbox's badge counts: conversations not RESOLVED that a session may see.

One grouped statement, read through the caller's scoped session: the scoping layer
(weflux.auth.scoping) decides what is visible, workspace, erasure tombstones and an
Agent's rule alike, so nothing here knows who may see what. The result is kept by
assignee, so every member who sees alike (all Admins and Managers of a workspace) shares
one statement: each reads `mine` from their own row of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.models import Conversation, ConversationStatus

# Every status but RESOLVED, as an IN list: a B-tree range on the index, whatever the plan.
COUNTED_STATUSES = tuple(s for s in ConversationStatus if s != ConversationStatus.RESOLVED)


@dataclass(frozen=True)
class InboxCounts:
    """The four badges of one member."""

    mine: int
    unassigned: int
    all: int
    unread: int


@dataclass(frozen=True)
class Assigned:
    """The visible conversations of one assignee (None: nobody) that are not RESOLVED."""

    conversations: int
    unread: int


@dataclass(frozen=True)
class InboxTally:
    """What one session sees of the inbox, by assignee: the counts of any member who sees
    through the same rules."""

    by_assignee: Mapping[uuid.UUID | None, Assigned]

    def counts_for(self, membership_id: uuid.UUID) -> InboxCounts:
        """The badges of `membership_id`, who sees what the counting session saw."""
        none = Assigned(0, 0)
        return InboxCounts(
            mine=self.by_assignee.get(membership_id, none).conversations,
            unassigned=self.by_assignee.get(None, none).conversations,
            all=sum(a.conversations for a in self.by_assignee.values()),
            unread=sum(a.unread for a in self.by_assignee.values()),
        )


async def tally(session: AsyncSession) -> InboxTally:
    """Count the session's visible conversations that are not RESOLVED, in one statement."""
    assignee = col(Conversation.assignee_membership_id)
    rows = (
        await session.exec(
            select(
                assignee,
                func.count(),
                func.count().filter(col(Conversation.unread_count) > 0),
            )
            .where(col(Conversation.status).in_(COUNTED_STATUSES))
            .group_by(assignee)
        )
    ).all()
    return InboxTally({member: Assigned(int(total), int(unread)) for member, total, unread in rows})
