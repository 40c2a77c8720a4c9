"""a label's conversations in the inbox list's order: a labelled page reads a page

Revision ID: 0030_label_inbox_order
Revises: 0029_email_normal_form
Create Date: 2026-12-05 21:20:00 UTC

A page of `conversations(labelId:)` read every conversation of the label and sorted them
(50-55 ms at 200,000 conversations on PostgreSQL with one in ten labelled): the list's
order (`last_message_at DESC NULLS LAST, id DESC`) was only in `conversations`.
`conversation_labels` gets its conversation's `last_message_at`, and an index of a
label's labellings in the list's order, which a page walks from its cursor
(weflux.services.conversations), joined to each conversation by key.

The copy is kept in step by the database, whatever the writer (the webhook's folded
statement, a reply, a restore, a bulk load): a labelling takes its conversation's value
when it is inserted, and a conversation's new `last_message_at` is copied onto its
labellings in the statement that changes it. On PostgreSQL the insert's read takes a
share lock of the conversation, so a concurrent change of it waits for (or is waited on
by) the labelling and neither is missed. Existing labellings are backfilled.

A copy out of step could only hide a labelling from a page (the join asks for equal
values), never show a conversation its reader may not see: the conversation's own row,
under the scoping layer and row-level security, is what each page returns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime

revision: str = "0030_label_inbox_order"
down_revision: str | None = "0029_email_normal_form"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "conversation_labels"
COLUMN = "last_message_at"
INDEX_POSTGRESQL = "ix_conversation_labels_inbox_order"
INDEX_SQLITE = "ix_conversation_labels_org_id_label_id_last_message_at_conversation_id"
BACKFILL = (
    "UPDATE conversation_labels SET last_message_at = (SELECT c.last_message_at "
    "FROM conversations c WHERE c.id = conversation_labels.conversation_id)"
)

# PostgreSQL: plain (not SECURITY DEFINER) functions, so the copies are written under the
# writer's own row-level security: a labelling and its conversation share a workspace.
TAKE_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_label_takes_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  SELECT c.last_message_at INTO NEW.last_message_at FROM conversations c
  WHERE c.id = NEW.conversation_id FOR SHARE;
  RETURN NEW;
END $$
"""
FOLLOW_FUNCTION = """
CREATE OR REPLACE FUNCTION weflux_labels_follow_activity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE conversation_labels SET last_message_at = NEW.last_message_at
  WHERE conversation_id = NEW.id;
  RETURN NULL;
END $$
"""
POSTGRESQL_TRIGGERS = (
    f"CREATE TRIGGER weflux_label_takes_activity BEFORE INSERT ON {TABLE} "
    "FOR EACH ROW EXECUTE FUNCTION weflux_label_takes_activity()",
    "CREATE TRIGGER weflux_labels_follow_activity AFTER UPDATE OF last_message_at "
    "ON conversations FOR EACH ROW "
    "WHEN (OLD.last_message_at IS DISTINCT FROM NEW.last_message_at) "
    "EXECUTE FUNCTION weflux_labels_follow_activity()",
)
SQLITE_TRIGGERS = (
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


def upgrade() -> None:
    op.add_column(TABLE, sa.Column(COLUMN, UTCDateTime(), nullable=True))
    op.execute(BACKFILL)
    if _postgresql():
        op.create_index(
            INDEX_POSTGRESQL,
            TABLE,
            [
                "org_id",
                "label_id",
                sa.text(f"{COLUMN} DESC NULLS LAST"),
                sa.text("conversation_id DESC"),
            ],
        )
        op.execute(TAKE_FUNCTION)
        op.execute(FOLLOW_FUNCTION)
        for statement in POSTGRESQL_TRIGGERS:
            op.execute(statement)
        return
    op.create_index(INDEX_SQLITE, TABLE, ["org_id", "label_id", COLUMN, "conversation_id"])
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if _postgresql():
        op.execute(f"DROP TRIGGER IF EXISTS weflux_label_takes_activity ON {TABLE}")
        op.execute("DROP TRIGGER IF EXISTS weflux_labels_follow_activity ON conversations")
        op.execute("DROP FUNCTION IF EXISTS weflux_label_takes_activity()")
        op.execute("DROP FUNCTION IF EXISTS weflux_labels_follow_activity()")
        op.drop_index(INDEX_POSTGRESQL, table_name=TABLE)
        op.drop_column(TABLE, COLUMN)
        return
    op.execute("DROP TRIGGER IF EXISTS weflux_label_takes_activity")
    op.execute("DROP TRIGGER IF EXISTS weflux_labels_follow_activity")
    op.drop_index(INDEX_SQLITE, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column(COLUMN)
