"""the index behind the inbox counts (inboxCounts, inboxCountsUpdated)

Revision ID: 0017_inbox_counts
Revises: 0016_message_reactions
Create Date: 2026-12-05 06:20:00 UTC

One partial index over the conversations that are not erased, by workspace and assignee,
carrying status and unread count: the counts' one grouped statement reads it alone
(an index-only scan on PostgreSQL), for an Admin's whole workspace as for an Agent's
two assignee values (theirs and none).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_inbox_counts"
down_revision: str | None = "0016_message_reactions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_conversations_inbox_counts"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "conversations",
        ["org_id", "assignee_membership_id", "status", "unread_count"],
        unique=False,
        postgresql_where=sa.text("erased_at IS NULL"),
        sqlite_where=sa.text("erased_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="conversations")
