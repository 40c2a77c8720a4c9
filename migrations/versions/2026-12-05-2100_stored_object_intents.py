"""stored object intents: a file about to be written to the media store, recorded first

Each write to the media store (an upload, an inbound download) first commits a row
naming the file's key; the transaction that writes the file's owning row deletes it. The
lifecycle worker deletes the file of a row older than an hour, then the row: a file
whose owning row never came (the store's answer lost after the file landed, the
process killed between the write and the commit, a rolled-back transaction) no longer
outlives every retention and erasure (weflux/media/intents.py).

`stored_object_intents` is workspace-owned (tenant row-level security); the sweep finds
stale ones across workspaces through `weflux_stale_object_intents` (SECURITY DEFINER,
ids only, docs/security/tenancy.md).

Revision ID: 0028_stored_object_intents
Revises: 0027_retention_gaps
Create Date: 2026-12-05 21:00:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0028_stored_object_intents"
down_revision: str | None = "0027_retention_gaps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "stored_object_intents"
_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
FUNCTION = "weflux_stale_object_intents(created_before timestamptz, batch integer)"
SIGNATURE = "weflux_stale_object_intents(timestamptz, integer)"
BODY = """SELECT i.org_id, i.id FROM stored_object_intents i
   WHERE i.created_at < $1
   ORDER BY i.created_at, i.id
   LIMIT least(greatest($2, 0), 500)"""


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_stored_object_intents_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_object_intents")),
    )
    op.create_index(
        op.f("ix_stored_object_intents_org_id_storage_key"),
        TABLE,
        ["org_id", "storage_key"],
        unique=True,
    )
    op.create_index(op.f("ix_stored_object_intents_created_at"), TABLE, ["created_at"])
    enable_tenant_rls(TABLE)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE OR REPLACE FUNCTION {FUNCTION} RETURNS TABLE (org_id uuid, intent_id uuid) "
            f"LANGUAGE sql STABLE {_DEFINER} AS $fn$ {BODY} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    disable_tenant_rls(TABLE)
    op.drop_index(op.f("ix_stored_object_intents_created_at"), table_name=TABLE)
    op.drop_index(op.f("ix_stored_object_intents_org_id_storage_key"), table_name=TABLE)
    op.drop_table(TABLE)
