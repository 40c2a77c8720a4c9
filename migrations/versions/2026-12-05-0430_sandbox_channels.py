"""sandbox channels: a WhatsApp number answered by the in-process Cloud API sandbox

The demo numbers `weflux demo` created before (their status_detail says so; their
credentials are random) become sandbox channels.

Revision ID: 0012_sandbox_channels
Revises: 0011_lifecycle
Create Date: 2026-12-05 04:30:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_sandbox_channels"
down_revision: str | None = "0011_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch rebuild: a restore upgrades an older backup in its
    # transaction with foreign keys on, where rebuilding a parent table on SQLite cascades
    # into its children (tests/lifecycle/test_backups.py restores across this).
    op.add_column(
        "whatsapp_accounts",
        sa.Column("sandbox", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        sa.text(
            "UPDATE whatsapp_accounts SET sandbox = :yes WHERE status_detail = :demo"
        ).bindparams(yes=True, demo="demo number: it is not connected to Meta")
    )


def downgrade() -> None:
    with op.batch_alter_table("whatsapp_accounts") as batch:
        batch.drop_column("sandbox")
