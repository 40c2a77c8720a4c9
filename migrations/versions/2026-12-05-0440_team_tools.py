"""labels, conversation labels, private notes and canned replies

Revision ID: 0013_team_tools
Revises: 0012_sandbox_channels
Create Date: 2026-12-05 04:30:00 UTC

All four are workspace-owned (tenant row-level security).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0013_team_tools"
down_revision: str | None = "0012_sandbox_channels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("labels", "conversation_labels", "notes", "canned_replies")


def _org(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["org_id"],
        ["organizations.id"],
        name=op.f(f"fk_{table}_org_id_organizations"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("color", sa.String(length=7), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _org("labels"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
    )
    op.create_index(op.f("ix_labels_org_id_name"), "labels", ["org_id", "name"], unique=False)
    op.create_table(
        "conversation_labels",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("label_id", sa.Uuid(), nullable=False),
        _org("conversation_labels"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_labels_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["label_id"],
            ["labels.id"],
            name=op.f("fk_conversation_labels_label_id_labels"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_labels")),
    )
    op.create_index(
        "uq_conversation_labels_conversation_id_label_id",
        "conversation_labels",
        ["conversation_id", "label_id"],
        unique=True,
    )
    op.create_index(
        op.f("ix_conversation_labels_org_id_label_id_conversation_id"),
        "conversation_labels",
        ["org_id", "label_id", "conversation_id"],
        unique=False,
    )
    op.create_table(
        "notes",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("author_membership_id", sa.Uuid(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _org("notes"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_notes_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["author_membership_id"],
            ["memberships.id"],
            name=op.f("fk_notes_author_membership_id_memberships"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
    )
    op.create_index(
        op.f("ix_notes_org_id_conversation_id_id"),
        "notes",
        ["org_id", "conversation_id", "id"],
        unique=False,
    )
    op.create_table(
        "canned_replies",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("shortcut", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _org("canned_replies"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canned_replies")),
    )
    op.create_index(
        "uq_canned_replies_org_id_shortcut", "canned_replies", ["org_id", "shortcut"], unique=True
    )
    for table in TABLES:
        enable_tenant_rls(table)


def downgrade() -> None:
    for table in TABLES:
        disable_tenant_rls(table)
    op.drop_index("uq_canned_replies_org_id_shortcut", table_name="canned_replies")
    op.drop_table("canned_replies")
    op.drop_index(op.f("ix_notes_org_id_conversation_id_id"), table_name="notes")
    op.drop_table("notes")
    op.drop_index(
        op.f("ix_conversation_labels_org_id_label_id_conversation_id"),
        table_name="conversation_labels",
    )
    op.drop_index(
        "uq_conversation_labels_conversation_id_label_id", table_name="conversation_labels"
    )
    op.drop_table("conversation_labels")
    op.drop_index(op.f("ix_labels_org_id_name"), table_name="labels")
    op.drop_table("labels")
