"""emoji reactions on messages, keyed by the wamid they react to

Revision ID: 0016_message_reactions
Revises: 0015_security_retention
Create Date: 2026-12-05 05:10:00 UTC

`message_reactions` is workspace-owned (tenant row-level security).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0016_message_reactions"
down_revision: str | None = "0015_security_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "message_reactions"
UNIQUE = "uq_message_reactions_org_id_target_reactor"
BY_CONVERSATION = "ix_message_reactions_org_id_conversation_id"


def _fk(column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{TABLE}_{column}_{target}"),
        ondelete=ondelete,
    )


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("target_wa_message_id", sa.String(length=128), nullable=False),
        sa.Column("reactor", sa.String(length=80), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=True),
        sa.Column("membership_id", sa.Uuid(), nullable=True),
        sa.Column("emoji", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _fk("org_id", "organizations", "CASCADE"),
        _fk("conversation_id", "conversations", "CASCADE"),
        _fk("contact_id", "contacts", "CASCADE"),
        _fk("membership_id", "memberships", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
    )
    op.create_index(UNIQUE, TABLE, ["org_id", "target_wa_message_id", "reactor"], unique=True)
    op.create_index(op.f(BY_CONVERSATION), TABLE, ["org_id", "conversation_id"], unique=False)
    enable_tenant_rls(TABLE)


def downgrade() -> None:
    disable_tenant_rls(TABLE)
    op.drop_index(op.f(BY_CONVERSATION), table_name=TABLE)
    op.drop_index(UNIQUE, table_name=TABLE)
    op.drop_table(TABLE)
