"""feed retention: messages by media file, the feed's floor, removals' retention mark

Revision ID: 0021_feed_retention
Revises: 0020_conversation_removals
Create Date: 2026-12-05 07:10:00 UTC

- `ix_messages_org_id_media_file_id` (partial: only messages carrying an upload): whether
  any other message still carries an upload, asked by erasure, message retention and the
  expiry of uploads never sent (weflux.lifecycle.erasure), is one index probe per file.
- `organizations.feed_floor`: on SQLite, the highest change-feed position a purge deleted
  (erasure, retention); new positions are allocated above it, so a number is never
  handed out twice (weflux.auth.scoping). PostgreSQL's sequence never goes back.
- `organizations.removals_pruned_through`: the highest position of a removal
  (`conversation_removals`) the daily retention deleted; `conversationRemoved(after:)`
  refuses an older cursor (docs/realtime.md#conversationremoved).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_feed_retention"
down_revision: str | None = "0020_conversation_removals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BY_MEDIA = "ix_messages_org_id_media_file_id"
CARRIES = "media_file_id IS NOT NULL"
COLUMNS = ("feed_floor", "removals_pruned_through")


def upgrade() -> None:
    op.create_index(
        BY_MEDIA,
        "messages",
        ["org_id", "media_file_id"],
        postgresql_where=sa.text(CARRIES),
        sqlite_where=sa.text(CARRIES),
    )
    for name in COLUMNS:
        op.add_column(
            "organizations",
            sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    for name in COLUMNS:
        op.drop_column("organizations", name)
    op.drop_index(BY_MEDIA, table_name="messages")
