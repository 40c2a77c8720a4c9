"""a status within an assignee's conversations in the inbox list's order: an Agent's
labelled page with a status reads a page

Revision ID: 0031_inbox_order_assignee_status
Revises: 0030_label_inbox_order
Create Date: 2026-12-05 21:30:00 UTC

An Agent's page of a label with a status (`conversations(labelId:, status:)`) is read as
the Agent's two parts, their own conversations and nobody's, each walked in the list's
order (`last_message_at DESC NULLS LAST, id DESC`) with each row's labelling probed by
key (weflux.services.conversations). PostgreSQL read every conversation of the part
with the status instead (a bitmap of `ix_conversations_inbox_counts`) and sorted them:
at 200,000 conversations about 2,000 per part, 17-21x the floor for a page. Its
estimate of each bitmap arm counts the Agent's condition twice (the part's `assignee =
me` and the scoping layer's `assignee = me OR assignee IS NULL`, split into arms), so
the per-row probe of the label looked paid on a twentieth of the rows; extended
statistics do not reach those arms.

Two indexes of the listed conversations (not erased) in the list's order after the
status: an assignee's (`(org_id, assignee_membership_id, status, ...)`) and nobody's
(`(org_id, status, ...) WHERE assignee_membership_id IS NULL`: PostgreSQL takes no
order from a column fixed by `IS NULL`). A part with a status is then one range of an
index, read from its cursor for a page whatever the share of the status, the Agent or
the label; so is a page with a status and an assignee (OPEN + ME, OPEN + UNASSIGNED),
which walked the assignee's index and tested the status. `ix_conversations_inbox_counts`
stays: the counts read it alone (an index-only scan of about 190 pages at 200,000), and
the ordered index, wider, would be read as the table instead.

SQLite (no statistics) sought the status index for nobody's part and tested the
assignee on each row: one index `(org_id, assignee_membership_id, status,
last_message_at, id)`, read backwards (`IS NULL` seeks there too).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0031_inbox_order_assignee_status"
down_revision: str | None = "0030_label_inbox_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "conversations"
LISTED = "erased_at IS NULL"
NEWEST_FIRST = [sa.text("last_message_at DESC NULLS LAST"), sa.text("id DESC")]
POSTGRESQL = {
    "ix_conversations_inbox_order_assignee_status": (
        ["assignee_membership_id", "status"],
        LISTED,
    ),
    "ix_conversations_inbox_order_unassigned_status": (
        ["status"],
        f"{LISTED} AND assignee_membership_id IS NULL",
    ),
}
SQLITE = "ix_conversations_org_id_assignee_membership_id_status_last_message_at_id"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        for name, (columns, where) in POSTGRESQL.items():
            op.create_index(
                name, TABLE, ["org_id", *columns, *NEWEST_FIRST], postgresql_where=sa.text(where)
            )
        return
    op.create_index(
        SQLITE, TABLE, ["org_id", "assignee_membership_id", "status", "last_message_at", "id"]
    )


def downgrade() -> None:
    if _postgresql():
        for name in POSTGRESQL:
            op.drop_index(name, table_name=TABLE)
        return
    op.drop_index(SQLITE, table_name=TABLE)
