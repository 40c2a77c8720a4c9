"""the inbox list's order as indexes: a page reads a page, on both engines

Revision ID: 0023_inbox_order_indexes
Revises: 0022_erased_conversations_index
Create Date: 2026-12-05 15:00:00 UTC

The inbox list (`conversations`, weflux.services.conversations) is ordered by
`last_message_at DESC NULLS LAST, id DESC`, and a page is read as parts each walked in
that order from its cursor (for an Agent their own and nobody's conversations; after a
cursor the dated rest and the undated ones).

PostgreSQL: its ascending indexes read backwards give `NULLS FIRST`, so it read every
visible conversation of the workspace and sorted them for each page (a parallel
sequential scan for an Admin, a bitmap scan of an Agent's two assignee values). The three
ascending list indexes are replaced by four partial ones (conversations not erased) in
the list's own order: the workspace, one status, one assignee, nobody's. And extended
statistics (MCV) of (org_id, assignee_membership_id): an Agent's part carries both its
own condition (`assignee = me`) and the scoping layer's (`assignee = me OR assignee IS
NULL`), which the planner took as independent, estimating the part a tenth of its size;
under a page's worth it chose a bitmap scan and a sort of the whole part. The MCV list
evaluates the clauses together (a large workspace's members are among its items).

SQLite (an index cannot say NULLS LAST) reads ascending indexes backwards, which is the
list's order; its status and assignee indexes gain `id`, so a filtered page (and each of
an Agent's parts: `IS NULL` seeks there too) is read in order instead of filtering the
workspace's index until a page is found (all of it when nothing matches).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_inbox_order_indexes"
down_revision: str | None = "0022_erased_conversations_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "conversations"
LISTED = "erased_at IS NULL"
NEWEST_FIRST = [sa.text("last_message_at DESC NULLS LAST"), sa.text("id DESC")]
POSTGRESQL = {
    "ix_conversations_inbox_order": ([], LISTED),
    "ix_conversations_inbox_order_status": (["status"], LISTED),
    "ix_conversations_inbox_order_assignee": (["assignee_membership_id"], LISTED),
    "ix_conversations_inbox_order_unassigned": ([], f"{LISTED} AND assignee_membership_id IS NULL"),
}
# Before: the same on both engines.
ASCENDING = {
    "ix_conversations_org_id_last_message_at_id": ["org_id", "last_message_at", "id"],
    "ix_conversations_org_id_status_last_message_at": ["org_id", "status", "last_message_at"],
    "ix_conversations_org_id_assignee_membership_id_last_message_at": [
        "org_id",
        "assignee_membership_id",
        "last_message_at",
    ],
}
# SQLite after: the workspace's index stays; these two replace the other two.
SQLITE = {
    "ix_conversations_org_id_status_last_message_at_id": [
        "org_id",
        "status",
        "last_message_at",
        "id",
    ],
    "ix_conversations_org_id_assignee_membership_id_last_message_at_id": [
        "org_id",
        "assignee_membership_id",
        "last_message_at",
        "id",
    ],
}
STATISTICS = "st_conversations_org_id_assignee_membership_id"
SQLITE_REPLACED = [
    "ix_conversations_org_id_status_last_message_at",
    "ix_conversations_org_id_assignee_membership_id_last_message_at",
]


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        for name, (columns, where) in POSTGRESQL.items():
            op.create_index(
                name, TABLE, ["org_id", *columns, *NEWEST_FIRST], postgresql_where=sa.text(where)
            )
        for name in ASCENDING:
            op.drop_index(name, table_name=TABLE)
        op.execute(
            f"CREATE STATISTICS {STATISTICS} (mcv) ON org_id, assignee_membership_id FROM {TABLE}"
        )
        return
    for name, columns in SQLITE.items():
        op.create_index(name, TABLE, columns)
    for name in SQLITE_REPLACED:
        op.drop_index(name, table_name=TABLE)


def downgrade() -> None:
    if _postgresql():
        op.execute(f"DROP STATISTICS {STATISTICS}")
        for name, columns in ASCENDING.items():
            op.create_index(name, TABLE, columns)
        for name in POSTGRESQL:
            op.drop_index(name, table_name=TABLE)
        return
    for name in SQLITE_REPLACED:
        op.create_index(name, TABLE, ASCENDING[name])
    for name in SQLITE:
        op.drop_index(name, table_name=TABLE)
