"""two factor

Revision ID: 0009_two_factor
Revises: 0008_incidents
Create Date: 2026-12-05 03:40:00 UTC

Two-factor authentication and re-authentication (docs/security/two-factor.md):
the user's sealed TOTP secret, its last accepted time step, the hashes of the unused
recovery codes and the pending mfaToken's hash on `users` (whose row-level security
policies already cover these columns); the workspace's `require_two_factor`; and each
session's `authenticated_at`. Sessions opened before this migration have none, so
they must re-authenticate before their first sensitive operation.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime

revision: str = "0009_two_factor"
down_revision: str | None = "0008_incidents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on `users` (SQLite 3.35+ drops columns itself): a batch copy of the
# table would lose its expression index `uq_users_email_lower` on SQLite.
USER_COLUMNS = (
    ("totp_secret_enc", sa.Text()),
    ("two_factor_enabled_at", UTCDateTime()),
    ("totp_last_step", sa.BigInteger()),
    ("recovery_code_hashes", sa.Text()),
    ("mfa_challenge_hash", sa.String(length=64)),
)


def upgrade() -> None:
    for name, type_ in USER_COLUMNS:
        op.add_column("users", sa.Column(name, type_, nullable=True))
    # Plain ADD COLUMN, no batch rebuild: a restore upgrades an older backup inside its
    # transaction with foreign keys enforced, where rebuilding a parent table (DROP and
    # re-CREATE) on SQLite would cascade into every child row.
    op.add_column(
        "organizations",
        sa.Column("require_two_factor", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("sessions", sa.Column("authenticated_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("authenticated_at")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("require_two_factor")
    for name, _ in reversed(USER_COLUMNS):
        op.drop_column("users", name)
