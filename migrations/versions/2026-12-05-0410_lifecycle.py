"""lifecycle: data requests, erasure tombstones, retention, the erasure ledger

`data_requests` (per workspace) holds erasures, deletions and exports; contacts and
conversations get an `erased_at` tombstone (the unique ids of a contact no longer count
once it is erased, so a person who writes again is a new contact); workspaces get their
retention policy and a deletion date; `erasure_ledger` (platform-level, insert-only for
the app's role) records each erasure without personal data; and the worker's
cross-workspace steps are SECURITY DEFINER functions (docs/security/tenancy.md).

Revision ID: 0011_lifecycle
Revises: 0010_security_events
Create Date: 2026-12-05 04:10:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import OWNER_POLICY, create_owner_policy, enable_tenant_rls

revision: str = "0011_lifecycle"
down_revision: str | None = "0010_security_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("CONTACT_ERASURE", "WORKSPACE_DELETION", "CONTACT_EXPORT", "WORKSPACE_EXPORT")
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "CANCELLED", "FAILED")
OPEN = "status IN ('PENDING', 'RUNNING')"

# erasure_ledger: the app's role only appends; reading it is for backups and restores,
# which run as the schema owner.
LEDGER_POLICIES = {"append_only": "FOR INSERT WITH CHECK (true)"}

_DEFINER = "SECURITY DEFINER SET search_path = public, pg_temp"
FUNCTIONS = {
    "weflux_due_data_requests(at_time timestamptz, batch integer)": (
        "TABLE (org_id uuid, request_id uuid)",
        "STABLE",
        """SELECT r.org_id, r.id FROM data_requests r
           WHERE r.status IN ('PENDING', 'RUNNING') AND r.run_after <= $1
           ORDER BY r.run_after, r.id
           LIMIT least(greatest($2, 0), 500)""",
    ),
    # Deletes (never reads) raw bodies that contain one of the needles: an erased
    # contact's WhatsApp ids, quoted as JSON strings.
    "weflux_erase_webhook_bodies(needles text[], batch integer)": (
        "integer",
        "VOLATILE",
        """WITH doomed AS (
             SELECT e.id FROM webhook_events e
             WHERE EXISTS (SELECT 1 FROM unnest($1) AS n(needle)
                           WHERE n.needle <> '' AND position(convert_to(n.needle, 'UTF8') IN e.body) > 0)
             LIMIT least(greatest($2, 0), 500)),
           gone AS (DELETE FROM webhook_events w USING doomed d WHERE w.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone""",
    ),
    "weflux_expire_webhook_bodies(processed_before timestamptz, batch integer)": (
        "integer",
        "VOLATILE",
        """WITH doomed AS (
             SELECT e.id FROM webhook_events e
             WHERE e.status = 'PROCESSED' AND e.processed_at < $1
             LIMIT least(greatest($2, 0), 500)),
           gone AS (DELETE FROM webhook_events w USING doomed d WHERE w.id = d.id RETURNING 1)
           SELECT count(*)::integer FROM gone""",
    ),
    "weflux_webhook_payload_retention_days()": (
        "integer",
        "STABLE",
        """SELECT coalesce(min(o.webhook_payload_retention_days), 30)::integer
           FROM organizations o""",
    ),
    "weflux_due_retention(ran_before timestamptz, batch integer)": (
        "SETOF uuid",
        "STABLE",
        """SELECT o.id FROM organizations o
           WHERE o.retention_ran_at IS NULL OR o.retention_ran_at < $1
           ORDER BY o.retention_ran_at ASC NULLS FIRST, o.id
           LIMIT least(greatest($2, 0), 500)""",
    ),
    "weflux_expired_exports(at_time timestamptz, batch integer)": (
        "TABLE (org_id uuid, request_id uuid)",
        "STABLE",
        """SELECT r.org_id, r.id FROM data_requests r
           WHERE r.file_name IS NOT NULL AND r.expires_at <= $1
           ORDER BY r.expires_at, r.id
           LIMIT least(greatest($2, 0), 500)""",
    ),
    "weflux_delete_orphan_users(user_ids uuid[])": (
        "integer",
        "VOLATILE",
        """WITH gone AS (
             DELETE FROM users u WHERE u.id = ANY ($1)
               AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id)
             RETURNING 1)
           SELECT count(*)::integer FROM gone""",
    ),
    # A deleted workspace's security alerts (the outbox is not workspace-owned: platform
    # alerts have no workspace, so its rows cannot go by the tenant policy).
    "weflux_delete_workspace_alerts(workspace uuid)": (
        "integer",
        "VOLATILE",
        """WITH gone AS (
             DELETE FROM security_alerts a WHERE a.org_id = $1
             RETURNING 1)
           SELECT count(*)::integer FROM gone""",
    ),
}


def _signature(name: str) -> str:
    function, _, arguments = name.partition("(")
    arguments = arguments.rstrip(")")
    types = [arg.strip().split(" ", 1)[1] for arg in arguments.split(",")] if arguments else []
    return f"{function}({', '.join(types)})"


def upgrade() -> None:
    # Plain ADD COLUMN and CREATE INDEX on both engines, never a batch rebuild: a restore
    # runs this migration in its transaction with foreign keys on, where dropping a
    # rebuilt table would cascade to every row that refers to it.
    op.add_column("organizations", sa.Column("message_retention_days", sa.Integer()))
    op.add_column(
        "organizations",
        sa.Column(
            "webhook_payload_retention_days", sa.Integer(), nullable=False, server_default="30"
        ),
    )
    op.add_column("organizations", sa.Column("retention_ran_at", UTCDateTime()))
    op.add_column("organizations", sa.Column("deletion_scheduled_at", UTCDateTime()))

    op.add_column("contacts", sa.Column("erased_at", UTCDateTime()))
    for name, column in (
        ("uq_contacts_org_id_wa_id", "wa_id"),
        ("uq_contacts_org_id_user_id", "user_id"),
    ):
        op.drop_index(name, table_name="contacts")
        op.create_index(
            name,
            "contacts",
            ["org_id", column],
            unique=True,
            postgresql_where=sa.text(f"{column} IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=sa.text(f"{column} IS NOT NULL AND erased_at IS NULL"),
        )

    op.create_index("ix_webhook_events_processed_at", "webhook_events", ["processed_at"])
    op.add_column("conversations", sa.Column("erased_at", UTCDateTime()))
    op.create_index(
        "ix_conversations_erased",
        "conversations",
        ["org_id", "id"],
        unique=False,
        postgresql_where=sa.text("erased_at IS NOT NULL"),
        sqlite_where=sa.text("erased_at IS NOT NULL"),
    )

    op.create_table(
        "data_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                *KINDS,
                name="data_request_kind",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                *STATUSES,
                name="data_request_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("subject_id", sa.Uuid(), nullable=True),
        sa.Column("requested_by_membership_id", sa.Uuid(), nullable=True),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("run_after", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("file_name", sa.String(length=128), nullable=True),
        sa.Column("file_key_enc", sa.Text(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("overdue_reported_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_data_requests_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_membership_id"],
            ["memberships.id"],
            name=op.f("fk_data_requests_requested_by_membership_id_memberships"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_requests")),
    )
    with op.batch_alter_table("data_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_requests_org_id_id"), ["org_id", "id"])
        batch_op.create_index(
            "ix_data_requests_open",
            ["run_after"],
            unique=False,
            postgresql_where=sa.text(OPEN),
            sqlite_where=sa.text(OPEN),
        )
    enable_tenant_rls("data_requests")

    op.create_table(
        "erasure_ledger",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                *KINDS,
                name="erasure_ledger_kind",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("contact_id", sa.Uuid(), nullable=True),
        sa.Column("data_request_id", sa.Uuid(), nullable=True),
        sa.Column("wa_id_hmac", sa.String(length=64), nullable=True),
        sa.Column("user_id_hmac", sa.String(length=64), nullable=True),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_ledger")),
    )
    with op.batch_alter_table("erasure_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasure_ledger_recorded_at_id"), ["recorded_at", "id"])

    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE erasure_ledger ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE erasure_ledger FORCE ROW LEVEL SECURITY")
    for name, definition in LEDGER_POLICIES.items():
        op.execute(f"CREATE POLICY {name} ON erasure_ledger {definition}")
    create_owner_policy("erasure_ledger")
    for name, (result, volatility, body) in FUNCTIONS.items():
        op.execute(
            f"CREATE OR REPLACE FUNCTION {name} RETURNS {result} LANGUAGE sql {volatility} "
            f"{_DEFINER} AS $fn$ {body} $fn$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {_signature(name)} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {_signature(name)}")
        for name in (*LEDGER_POLICIES, OWNER_POLICY):
            op.execute(f"DROP POLICY IF EXISTS {name} ON erasure_ledger")
    with op.batch_alter_table("erasure_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasure_ledger_recorded_at_id"))
    op.drop_table("erasure_ledger")
    with op.batch_alter_table("data_requests", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_data_requests_open",
            postgresql_where=sa.text(OPEN),
            sqlite_where=sa.text(OPEN),
        )
        batch_op.drop_index(batch_op.f("ix_data_requests_org_id_id"))
    op.drop_table("data_requests")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_conversations_erased",
            postgresql_where=sa.text("erased_at IS NOT NULL"),
            sqlite_where=sa.text("erased_at IS NOT NULL"),
        )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_processed_at"))
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_contacts_org_id_wa_id",
            postgresql_where=sa.text("wa_id IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=sa.text("wa_id IS NOT NULL AND erased_at IS NULL"),
        )
        batch_op.drop_index(
            "uq_contacts_org_id_user_id",
            postgresql_where=sa.text("user_id IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=sa.text("user_id IS NOT NULL AND erased_at IS NULL"),
        )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
        batch_op.create_index(
            "uq_contacts_org_id_user_id",
            ["org_id", "user_id"],
            unique=True,
            postgresql_where=sa.text("user_id IS NOT NULL"),
            sqlite_where=sa.text("user_id IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_contacts_org_id_wa_id",
            ["org_id", "wa_id"],
            unique=True,
            postgresql_where=sa.text("wa_id IS NOT NULL"),
            sqlite_where=sa.text("wa_id IS NOT NULL"),
        )
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("deletion_scheduled_at")
        batch_op.drop_column("retention_ran_at")
        batch_op.drop_column("webhook_payload_retention_days")
        batch_op.drop_column("message_retention_days")
