"""a label's conversations by status and assignee in the inbox list's order: every
labelled page reads a page, whatever the shares

Revision ID: 0032_label_inbox_status_assignee
Revises: 0031_inbox_order_assignee_status
Create Date: 2026-12-06 02:10:00 UTC

A label's page that names a status or an assignee (ME, UNASSIGNED, an Agent's two parts)
walked the conversations' indexes of that status or assignee and probed each row's
labelling by key (migrations 0030, 0031). PostgreSQL estimates each arm of the scoping
layer's `assignee = me OR assignee IS NULL` with the part's own condition counted twice,
so where an Agent (or nobody) holds a small share (one in a hundred of 200,000
conversations) it read every OPEN conversation of the part (about 400) and sorted them
for each page; the Admin's label with a status walked the label and tested each row.

`conversation_labels` gets its conversation's `status` and `assignee_membership_id` too,
copied as `last_message_at` is (the same triggers, now of the three columns: a labelling
takes them when inserted, a conversation's change of any of them is copied onto its
labellings in the statement that makes it; on PostgreSQL the insert's read takes a share
lock of the conversation), and indexes of a label's labellings in the list's order after
the status, the assignee, both, and nobody's (PostgreSQL: partial, as it takes no order
from a column fixed by `IS NULL`) with and without a status. Every labelled page walks
the label's labellings from its cursor on the range of its filters (weflux.services.
conversations), each conversation read by key, where the restriction's OR is tested.
Existing labellings are backfilled.

A copy out of step could only misfile a labelling among a label's pages, never show a
conversation its reader may not see: the conversation's own row, under the scoping
layer and row-level security, is what each page returns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0032_label_inbox_status_assignee"
down_revision: str | None = "0031_inbox_order_assignee_status"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "conversation_labels"
NEWEST_FIRST = [sa.text("last_message_at DESC NULLS LAST"), sa.text("conversation_id DESC")]
UNASSIGNED = "assignee_membership_id IS NULL"
POSTGRESQL = {
    "ix_conversation_labels_inbox_order_status": (["status"], None),
    "ix_conversation_labels_inbox_order_assignee": (["assignee_membership_id"], None),
    "ix_conversation_labels_inbox_order_assignee_status": (
        ["assignee_membership_id", "status"],
        None,
    ),
    "ix_conversation_labels_inbox_order_unassigned": ([], UNASSIGNED),
    "ix_conversation_labels_inbox_order_unassigned_status": (["status"], UNASSIGNED),
}
SQLITE = {
    f"ix_conversation_labels_org_id_label_id_{'_'.join(columns)}_last_message_at_conversation_id": (
        columns
    )
    for columns in (
        ["status"],
        ["assignee_membership_id"],
        ["assignee_membership_id", "status"],
    )
}
BACKFILL = (
    "UPDATE conversation_labels SET status = c.status, "
    "assignee_membership_id = c.assignee_membership_id "
    "FROM conversations c WHERE c.id = conversation_labels.conversation_id"
)
BACKFILL_SQLITE = (
    "UPDATE conversation_labels SET (status, assignee_membership_id) = "
    "(SELECT c.status, c.assignee_membership_id FROM conversations c "
    "WHERE c.id = conversation_labels.conversation_id)"
)


# PostgreSQL: plain (not SECURITY DEFINER) functions, as 0030's, so the copies are written
# under the writer's own row-level security: a labelling and its conversation share a
# workspace. 0030's functions copied `last_message_at` alone (DOWNGRADE_*).
TAKE_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_label_takes_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  SELECT c.last_message_at, c.status, c.assignee_membership_id
  INTO NEW.last_message_at, NEW.status, NEW.assignee_membership_id
  FROM conversations c WHERE c.id = NEW.conversation_id FOR SHARE;
  RETURN NEW;
END $$
"""
FOLLOW_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_labels_follow_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE conversation_labels SET last_message_at = NEW.last_message_at,
    status = NEW.status, assignee_membership_id = NEW.assignee_membership_id
  WHERE conversation_id = NEW.id;
  RETURN NULL;
END $$
"""
FOLLOW_TRIGGER = (
    "CREATE TRIGGER weflux_labels_follow_activity "
    "AFTER UPDATE OF last_message_at, status, assignee_membership_id "
    "ON conversations FOR EACH ROW "
    "WHEN (OLD.last_message_at IS DISTINCT FROM NEW.last_message_at "
    "OR OLD.status IS DISTINCT FROM NEW.status "
    "OR OLD.assignee_membership_id IS DISTINCT FROM NEW.assignee_membership_id) "
    "EXECUTE FUNCTION weflux_labels_follow_activity()"
)
DOWNGRADE_TAKE_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_label_takes_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  SELECT c.last_message_at INTO NEW.last_message_at FROM conversations c
  WHERE c.id = NEW.conversation_id FOR SHARE;
  RETURN NEW;
END $$
"""
DOWNGRADE_FOLLOW_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_labels_follow_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE conversation_labels SET last_message_at = NEW.last_message_at
  WHERE conversation_id = NEW.id;
  RETURN NULL;
END $$
"""
DOWNGRADE_FOLLOW_TRIGGER = (
    "CREATE TRIGGER weflux_labels_follow_activity AFTER UPDATE OF last_message_at "
    "ON conversations FOR EACH ROW "
    "WHEN (OLD.last_message_at IS DISTINCT FROM NEW.last_message_at) "
    "EXECUTE FUNCTION weflux_labels_follow_activity()"
)
SQLITE_TRIGGERS = (
    "CREATE TRIGGER weflux_label_takes_activity AFTER INSERT ON conversation_labels "
    "FOR EACH ROW BEGIN UPDATE conversation_labels "
    "SET (last_message_at, status, assignee_membership_id) = "
    "(SELECT c.last_message_at, c.status, c.assignee_membership_id "
    "FROM conversations c WHERE c.id = NEW.conversation_id) "
    "WHERE id = NEW.id; END",
    "CREATE TRIGGER weflux_labels_follow_activity "
    "AFTER UPDATE OF last_message_at, status, assignee_membership_id "
    "ON conversations FOR EACH ROW "
    "WHEN OLD.last_message_at IS NOT NEW.last_message_at OR OLD.status IS NOT NEW.status "
    "OR OLD.assignee_membership_id IS NOT NEW.assignee_membership_id "
    "BEGIN UPDATE conversation_labels SET last_message_at = NEW.last_message_at, "
    "status = NEW.status, assignee_membership_id = NEW.assignee_membership_id "
    "WHERE conversation_id = NEW.id; END",
)
DOWNGRADE_SQLITE_TRIGGERS = (
    "CREATE TRIGGER weflux_label_takes_activity AFTER INSERT ON conversation_labels "
    "FOR EACH ROW BEGIN UPDATE conversation_labels SET last_message_at = "
    "(SELECT c.last_message_at FROM conversations c WHERE c.id = NEW.conversation_id) "
    "WHERE id = NEW.id; END",
    "CREATE TRIGGER weflux_labels_follow_activity AFTER UPDATE OF last_message_at "
    "ON conversations FOR EACH ROW "
    "WHEN OLD.last_message_at IS NOT NEW.last_message_at "
    "BEGIN UPDATE conversation_labels SET last_message_at = NEW.last_message_at "
    "WHERE conversation_id = NEW.id; END",
)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _copies(*, downgrade: bool = False) -> None:
    """The triggers of the copies: of the three columns, or (`downgrade`) 0030's."""
    if _postgresql():
        op.execute("DROP TRIGGER IF EXISTS weflux_labels_follow_activity ON conversations")
        if downgrade:
            statements = (DOWNGRADE_TAKE_FUNCTION, DOWNGRADE_FOLLOW_FUNCTION)
            statements += (DOWNGRADE_FOLLOW_TRIGGER,)
        else:
            statements = (TAKE_FUNCTION, FOLLOW_FUNCTION, FOLLOW_TRIGGER)
    else:
        op.execute("DROP TRIGGER IF EXISTS weflux_label_takes_activity")
        op.execute("DROP TRIGGER IF EXISTS weflux_labels_follow_activity")
        statements = DOWNGRADE_SQLITE_TRIGGERS if downgrade else SQLITE_TRIGGERS
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("status", sa.String(16), nullable=True))
    op.add_column(TABLE, sa.Column("assignee_membership_id", sa.Uuid(), nullable=True))
    if _postgresql():
        op.execute(BACKFILL)
        for name, (columns, where) in POSTGRESQL.items():
            op.create_index(
                name,
                TABLE,
                ["org_id", "label_id", *columns, *NEWEST_FIRST],
                postgresql_where=sa.text(where) if where else None,
            )
    else:
        op.execute(BACKFILL_SQLITE)
        for name, columns in SQLITE.items():
            op.create_index(
                name, TABLE, ["org_id", "label_id", *columns, "last_message_at", "conversation_id"]
            )
    _copies()


def downgrade() -> None:
    if _postgresql():
        _copies(downgrade=True)
        for name in POSTGRESQL:
            op.drop_index(name, table_name=TABLE)
        op.drop_column(TABLE, "assignee_membership_id")
        op.drop_column(TABLE, "status")
        return
    # The table is rebuilt: no trigger may name it meanwhile.
    op.execute("DROP TRIGGER IF EXISTS weflux_label_takes_activity")
    op.execute("DROP TRIGGER IF EXISTS weflux_labels_follow_activity")
    for name in SQLITE:
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("assignee_membership_id")
        batch.drop_column("status")
    _copies(downgrade=True)
