"""two factor

Revision ID: 0008_two_factor
Revises: 0007_tenancy
Create Date: 2026-12-05 03:30:00 UTC

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

revision: str = "0008_two_factor"
down_revision: str | None = "0007_tenancy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_secret_enc", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("two_factor_enabled_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("recovery_code_hashes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("mfa_challenge_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("require_two_factor", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("authenticated_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("authenticated_at")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("require_two_factor")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("mfa_challenge_hash")
        batch_op.drop_column("recovery_code_hashes")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("two_factor_enabled_at")
        batch_op.drop_column("totp_secret_enc")
