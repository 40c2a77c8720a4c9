"""conversation_removals: who lost the view of a conversation, in the change feed

Revision ID: 0020_conversation_removals
Revises: 0019_media_files
Create Date: 2026-12-05 07:00:00 UTC

A removal (reassigned away, erased, a member's role narrowed to AGENT) takes the next
position of its workspace's change feed, from the same counter as conversations and
messages: on PostgreSQL the feed trigger of migration 0018 (`weflux_take_change`), on
SQLite the flush (weflux.auth.scoping). `conversationRemoved(after:)` replays them
(docs/realtime.md#conversationremoved). Workspace-owned (tenant row-level security).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0020_conversation_removals"
down_revision: str | None = "0019_media_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "conversation_removals"
BY_POSITION = "ix_conversation_removals_org_id_update_seq"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("member_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("update_seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f(f"fk_{TABLE}_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
    )
    op.create_index(BY_POSITION, TABLE, ["org_id", "update_seq"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER weflux_change_feed BEFORE INSERT ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION weflux_take_change()"
        )
    enable_tenant_rls(TABLE)


def downgrade() -> None:
    disable_tenant_rls(TABLE)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS weflux_change_feed ON {TABLE}")
    op.drop_index(BY_POSITION, table_name=TABLE)
    op.drop_table(TABLE)
