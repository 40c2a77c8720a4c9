"""message templates synced from Meta; when a number's templates were last synced

Revision ID: 0014_message_templates
Revises: 0013_team_tools
Create Date: 2026-12-05 04:50:00 UTC

`message_templates` is workspace-owned (tenant row-level security).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0014_message_templates"
down_revision: str | None = "0013_team_tools"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_message_templates_org_id_account_id_name_language"


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch rebuild: a restore upgrades an older backup in its
    # transaction with foreign keys on, where rebuilding a parent table on SQLite cascades
    # into its children (tests/lifecycle/test_backups.py restores across this).
    op.add_column("whatsapp_accounts", sa.Column("templates_synced_at", UTCDateTime()))
    op.create_table(
        "message_templates",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("meta_template_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("parameter_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_message_templates_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["whatsapp_accounts.id"],
            name=op.f("fk_message_templates_account_id_whatsapp_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_templates")),
    )
    op.create_index(
        op.f(INDEX),
        "message_templates",
        ["org_id", "account_id", "name", "language"],
        unique=True,
    )
    enable_tenant_rls("message_templates")


def downgrade() -> None:
    disable_tenant_rls("message_templates")
    op.drop_index(op.f(INDEX), table_name="message_templates")
    op.drop_table("message_templates")
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_column("templates_synced_at")
