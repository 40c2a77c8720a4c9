"""whatsapp accounts and smtp settings

Revision ID: 0003_channels
Revises: 0002_invitations
Create Date: 2026-11-29 20:05:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0003_channels"
down_revision: str | None = "0002_invitations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "whatsapp_accounts",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("display_phone_number", sa.String(length=32), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("business_account_id", sa.String(length=64), nullable=False),
        sa.Column("webhook_key", sa.String(length=64), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("app_secret_enc", sa.Text(), nullable=True),
        sa.Column("webhook_verify_token_enc", sa.Text(), nullable=True),
        sa.Column("credentials_updated_at", UTCDateTime(), nullable=False),
        sa.Column("quality_rating", sa.String(length=16), nullable=False),
        sa.Column("messaging_limit_tier", sa.String(length=32), nullable=True),
        sa.Column("throughput_level", sa.String(length=32), nullable=True),
        sa.Column("verified_name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_detail", sa.String(length=500), nullable=True),
        sa.Column("health_checked_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("disconnected_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_whatsapp_accounts_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_whatsapp_accounts")),
    )
    op.create_index(
        op.f("ix_whatsapp_accounts_org_id_created_at"),
        "whatsapp_accounts",
        ["org_id", "created_at"],
    )
    op.create_index(
        "uq_whatsapp_accounts_live_phone_number_id",
        "whatsapp_accounts",
        ["phone_number_id"],
        unique=True,
        postgresql_where=sa.text("disconnected_at IS NULL"),
        sqlite_where=sa.text("disconnected_at IS NULL"),
    )
    op.create_index(
        op.f("ix_whatsapp_accounts_webhook_key"),
        "whatsapp_accounts",
        ["webhook_key"],
        unique=True,
    )
    op.create_index(
        op.f("ix_whatsapp_accounts_business_account_id"),
        "whatsapp_accounts",
        ["business_account_id"],
    )
    op.create_table(
        "smtp_settings",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=320), nullable=True),
        sa.Column("password_enc", sa.Text(), nullable=True),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("security", sa.String(length=16), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_smtp_settings_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smtp_settings")),
    )
    op.create_index(op.f("ix_smtp_settings_org_id"), "smtp_settings", ["org_id"], unique=True)
    enable_tenant_rls("whatsapp_accounts")
    enable_tenant_rls("smtp_settings")


def downgrade() -> None:
    disable_tenant_rls("smtp_settings")
    disable_tenant_rls("whatsapp_accounts")
    op.drop_table("smtp_settings")
    op.drop_table("whatsapp_accounts")
