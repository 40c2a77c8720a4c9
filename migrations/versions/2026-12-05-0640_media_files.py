"""media files: inbound media downloaded from Meta and uploads, stored encrypted

Revision ID: 0019_media_files
Revises: 0018_change_feed
Create Date: 2026-12-05 06:40:00 UTC

`media_files` is workspace-owned (tenant row-level security); the download worker finds
due files across workspaces through `weflux_due_media_downloads` (SECURITY DEFINER,
ids only, docs/security/tenancy.md). `messages.media_file_id` names the file a message
carries.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import disable_tenant_rls, enable_tenant_rls

revision: str = "0019_media_files"
down_revision: str | None = "0018_change_feed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DUE = "status IN ('PENDING', 'DOWNLOADING')"
_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
FUNCTION = "weflux_due_media_downloads(at_time timestamptz, batch integer)"
SIGNATURE = "weflux_due_media_downloads(timestamptz, integer)"
BODY = """SELECT f.org_id, f.id FROM media_files f
   WHERE f.status IN ('PENDING', 'DOWNLOADING') AND f.next_attempt_at <= $1
   ORDER BY f.next_attempt_at, f.id
   LIMIT least(greatest($2, 0), 500)
   FOR UPDATE OF f SKIP LOCKED"""


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch rebuild of `messages` (a parent table).
    op.add_column("messages", sa.Column("media_file_id", sa.Uuid(), nullable=True))
    op.create_table(
        "media_files",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "origin",
            sa.Enum(
                "INBOUND",
                "UPLOAD",
                name="media_origin",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("uploaded_by_membership_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("wa_media_id", sa.String(length=128), nullable=True),
        sa.Column("mime_type", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=128), nullable=True),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "DOWNLOADING",
                "READY",
                "FAILED",
                name="media_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("failure", sa.String(length=500), nullable=True),
        sa.Column("storage_key", sa.String(length=255), nullable=True),
        sa.Column("data_key_enc", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("stored_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_media_files_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_media_files_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by_membership_id"],
            ["memberships.id"],
            name=op.f("fk_media_files_uploaded_by_membership_id_memberships"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media_files")),
    )
    op.create_index(
        op.f("ix_media_files_org_id_message_id"), "media_files", ["org_id", "message_id"]
    )
    op.create_index(
        "ix_media_files_due",
        "media_files",
        ["next_attempt_at"],
        postgresql_where=sa.text(DUE),
        sqlite_where=sa.text(DUE),
    )
    enable_tenant_rls("media_files")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE OR REPLACE FUNCTION {FUNCTION} RETURNS TABLE (org_id uuid, media_id uuid) "
            f"LANGUAGE sql VOLATILE {_DEFINER} AS $fn$ {BODY} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    disable_tenant_rls("media_files")
    op.drop_index("ix_media_files_due", table_name="media_files")
    op.drop_index(op.f("ix_media_files_org_id_message_id"), table_name="media_files")
    op.drop_table("media_files")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("media_file_id")
