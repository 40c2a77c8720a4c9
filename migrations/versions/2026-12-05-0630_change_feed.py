"""the workspace change feed: `update_seq` on conversations and messages

Revision ID: 0018_change_feed
Revises: 0017_inbox_counts
Create Date: 2026-12-05 06:30:00 UTC

Every insert or visible change of a conversation or message takes the next position of
its workspace's change feed in the same statement (docs/realtime.md#the-change-feed).
On PostgreSQL a row trigger calls `weflux_next_change(org)`, which takes a transaction
advisory lock of the workspace (so a workspace's changes commit in the order of their
positions) and then the next value of one sequence; on SQLite, whose writers are
serialised anyway, the app allocates them (weflux.auth.scoping). Existing rows get
positions in creation order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_change_feed"
down_revision: str | None = "0017_inbox_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The advisory lock's class key: the workspace's hash is the second key.
LOCK_CLASS = 1717

# Every insert, and every update that changes more than the delivery worker's bookkeeping,
# takes the next position: batched INSERTs and UPDATEs stay batched, and RETURNING reads
# the position back.
TAKE_CHANGE = """
CREATE OR REPLACE FUNCTION weflux_take_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.update_seq := weflux_next_change(NEW.org_id);
    IF TG_TABLE_NAME = 'messages' THEN
      NEW.created_seq := NEW.update_seq;
    END IF;
  ELSIF NEW.update_seq < 0 OR (to_jsonb(NEW) - 'attempts' - 'next_attempt_at' - 'update_seq')
      IS DISTINCT FROM (to_jsonb(OLD) - 'attempts' - 'next_attempt_at' - 'update_seq') THEN
    -- (a negative update_seq: a change of something kept beside the row, e.g. a reaction)
    NEW.update_seq := weflux_next_change(NEW.org_id);
  END IF;
  RETURN NEW;
END $$
"""

NEXT_CHANGE = f"""
CREATE OR REPLACE FUNCTION weflux_next_change(org uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, hashtext(org::text));
  RETURN nextval('weflux_change_seq');
END $$
"""


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in ("conversations", "messages"):
        op.add_column(
            table, sa.Column("update_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    # A message's creation position: `messageUpdated` follows those changed since.
    op.add_column(
        "messages", sa.Column("created_seq", sa.BigInteger(), nullable=False, server_default="0")
    )
    # Backfill in creation order (ids are UUIDv7), conversations first.
    op.execute(
        "UPDATE conversations SET update_seq = ordered.seq FROM "
        "(SELECT id, row_number() OVER (ORDER BY id) AS seq FROM conversations) AS ordered "
        "WHERE conversations.id = ordered.id"
    )
    op.execute(
        "UPDATE messages SET update_seq = ordered.seq FROM "
        "(SELECT id, (SELECT count(*) FROM conversations) + row_number() OVER (ORDER BY id) "
        "AS seq FROM messages) AS ordered WHERE messages.id = ordered.id"
    )
    op.execute("UPDATE messages SET created_seq = update_seq")
    if postgresql:
        op.execute("CREATE SEQUENCE weflux_change_seq AS bigint")
        op.execute(
            "SELECT setval('weflux_change_seq', 1 + (SELECT count(*) FROM conversations) "
            "+ (SELECT count(*) FROM messages), false)"
        )
        op.execute(NEXT_CHANGE)
        op.execute("REVOKE ALL ON FUNCTION weflux_next_change(uuid) FROM PUBLIC")
        op.execute(TAKE_CHANGE)
        for table in ("conversations", "messages"):
            op.execute(
                f"CREATE TRIGGER weflux_change_feed BEFORE INSERT OR UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION weflux_take_change()"
            )
    for table in ("conversations", "messages"):
        op.create_index(f"ix_{table}_org_id_update_seq", table, ["org_id", "update_seq"])


def downgrade() -> None:
    for table in ("conversations", "messages"):
        op.drop_index(f"ix_{table}_org_id_update_seq", table_name=table)
    if op.get_bind().dialect.name == "postgresql":
        for table in ("conversations", "messages"):
            op.execute(f"DROP TRIGGER IF EXISTS weflux_change_feed ON {table}")
        op.execute("DROP FUNCTION IF EXISTS weflux_take_change()")
        op.execute("DROP FUNCTION IF EXISTS weflux_next_change(uuid)")
        op.execute("DROP SEQUENCE IF EXISTS weflux_change_seq")
    op.drop_column("messages", "created_seq")
    for table in ("conversations", "messages"):
        op.drop_column(table, "update_seq")
