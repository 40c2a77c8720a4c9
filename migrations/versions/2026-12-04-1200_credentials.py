"""credentials: pending sign-ups, and the refresh reuse interval's columns on sessions

Revision ID: 0005_credentials
Revises: 0004_inbox
Create Date: 2026-12-04 12:00:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime

revision: str = "0005_credentials"
down_revision: str | None = "0004_inbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("previous_refresh_token_hash", sa.String(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("rotated_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("successor_stamps", sa.JSON(), nullable=True))

    # Global like `users` (no workspace exists before the confirmation): no RLS policy.
    op.create_table(
        "pending_signups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("organization_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_signups")),
    )
    op.create_index(op.f("ix_pending_signups_email"), "pending_signups", ["email"])
    op.create_index(op.f("ix_pending_signups_expires_at"), "pending_signups", ["expires_at"])
    op.create_index(
        op.f("ix_pending_signups_token_hash"), "pending_signups", ["token_hash"], unique=True
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_pending_signups_token_hash"), table_name="pending_signups")
    op.drop_index(op.f("ix_pending_signups_expires_at"), table_name="pending_signups")
    op.drop_index(op.f("ix_pending_signups_email"), table_name="pending_signups")
    op.drop_table("pending_signups")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("successor_stamps")
        batch_op.drop_column("rotated_at")
        batch_op.drop_column("previous_refresh_token_hash")
