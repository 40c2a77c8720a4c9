"""security events, platform security events and the security alert outbox

Revision ID: 0010_security_events
Revises: 0009_two_factor
Create Date: 2026-12-05 04:00:00 UTC

`security_events` is workspace-owned (tenant row-level security). The two others are
global, with deliberate policies (docs/security/tenancy.md): the app's role only inserts
`platform_security_events` (the operator reads them as the owner), and inserts
`security_alerts` from anywhere but reads and updates them only in a transaction bound
to no workspace (the worker's), so no workspace's request can read another's alerts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import create_owner_policy, disable_tenant_rls, enable_tenant_rls

revision: str = "0010_security_events"
down_revision: str | None = "0009_two_factor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NO_WORKSPACE = "NULLIF(current_setting('app.org_id', true), '') IS NULL"
GLOBAL_TABLE_POLICIES = {
    "platform_security_events": {"new_platform_events": "FOR INSERT WITH CHECK (true)"},
    "security_alerts": {
        "new_alerts": "FOR INSERT WITH CHECK (true)",
        "alert_sender": f"FOR SELECT USING ({NO_WORKSPACE})",
        "alert_sender_update": f"FOR UPDATE USING ({NO_WORKSPACE}) WITH CHECK ({NO_WORKSPACE})",
    },
}


def upgrade() -> None:
    op.create_table(
        "security_events",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=500), nullable=False),
        sa.Column("actor_user_id", sa.Uuid(), nullable=True),
        sa.Column("actor_membership_id", sa.Uuid(), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
        sa.Column("acknowledged_by_membership_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_security_events_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    op.create_index(
        op.f("ix_security_events_org_id_id"), "security_events", ["org_id", "id"], unique=False
    )
    op.create_index(
        op.f("ix_security_events_org_id_severity_id"),
        "security_events",
        ["org_id", "severity", "id"],
        unique=False,
    )
    op.create_table(
        "platform_security_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=500), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_security_events")),
    )
    op.create_index(
        op.f("ix_platform_security_events_created_at"),
        "platform_security_events",
        ["created_at"],
        unique=False,
    )
    op.create_table(
        "security_alerts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("audience", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=False),
        sa.Column("recipient_user_id", sa.Uuid(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_alerts")),
    )
    op.create_index(
        op.f("ix_security_alerts_status_next_attempt_at"),
        "security_alerts",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_alerts_dedupe_key_sent_at"),
        "security_alerts",
        ["dedupe_key", "sent_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_alerts_audience_channel_sent_at"),
        "security_alerts",
        ["audience", "channel", "sent_at"],
        unique=False,
    )
    enable_tenant_rls("security_events")
    if op.get_bind().dialect.name == "postgresql":
        for table, policies in GLOBAL_TABLE_POLICIES.items():
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            for name, definition in policies.items():
                op.execute(f"CREATE POLICY {name} ON {table} {definition}")
            create_owner_policy(table)


def downgrade() -> None:
    disable_tenant_rls("security_events")
    op.drop_table("security_alerts")
    op.drop_table("platform_security_events")
    op.drop_index(op.f("ix_security_events_org_id_severity_id"), table_name="security_events")
    op.drop_index(op.f("ix_security_events_org_id_id"), table_name="security_events")
    op.drop_table("security_events")
