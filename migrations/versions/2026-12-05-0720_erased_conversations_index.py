"""erased conversations' index: covering, so SQLite's planner picks it

Revision ID: 0022_erased_conversations_index
Revises: 0021_feed_retention
Create Date: 2026-12-05 07:20:00 UTC

`ix_conversations_erased`, the partial index of the erasure tombstones, becomes
(org_id, erased_at, id) WHERE erased_at IS NOT NULL (was (org_id, id)). The scoping layer
hides the messages, notes, labellings and reactions of erased conversations with
`conversation_id NOT IN (SELECT id FROM conversations WHERE org_id = ? AND erased_at IS
NOT NULL)` (weflux.auth.scoping). SQLite's planner, without statistics, valued the old
index no better than `ix_conversations_org_id_update_seq` (one column of equality each,
neither covering) and took the latter: every conversation of the workspace read by every
statement on messages. With `erased_at` in the index it is covering and its range is
used, so the subquery reads the workspace's erased conversations only (few).
PostgreSQL used the old index already, and uses this one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_erased_conversations_index"
down_revision: str | None = "0021_feed_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_conversations_erased"
ERASED = "erased_at IS NOT NULL"


def _replace(columns: list[str]) -> None:
    op.drop_index(NAME, table_name="conversations")
    op.create_index(
        NAME,
        "conversations",
        columns,
        postgresql_where=sa.text(ERASED),
        sqlite_where=sa.text(ERASED),
    )


def upgrade() -> None:
    _replace(["org_id", "erased_at", "id"])


def downgrade() -> None:
    _replace(["org_id", "id"])
