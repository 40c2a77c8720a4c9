"""incidents: the platform's incident register, the workspaces each affects, who was told

`incidents` belongs to no workspace: the operator writes it (`weflux incident`, as the
schema owner) and the app's role may only read an incident in a transaction of a
workspace it affects. `incident_workspaces` and `incident_notices` are per workspace and
read-only for the app's role too: Admins read their own, nobody but the operator
writes. See docs/security/tenancy.md.

Revision ID: 0008_incidents
Revises: 0007_tenancy
Create Date: 2026-12-05 03:30:00 UTC
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from weflux.models.base import UTCDateTime
from weflux.models.rls import OWNER_POLICY, POLICY, WORKSPACE, create_owner_policy

revision: str = "0008_incidents"
down_revision: str | None = "0007_tenancy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AFFECTED = "affected_workspace"
# constants only
AFFECTS_WORKSPACE = (
    "EXISTS (SELECT 1 FROM incident_workspaces w "  # noqa: S608
    f"WHERE w.incident_id = incidents.id AND w.org_id = {WORKSPACE})"
)
# Table -> (policy name, its SELECT predicate). No INSERT, UPDATE or DELETE policy: the
# app's role writes none of these tables, whatever its grants.
READ_ONLY_POLICIES = {
    "incidents": (AFFECTED, AFFECTS_WORKSPACE),
    "incident_workspaces": (POLICY, f"org_id = {WORKSPACE}"),
    "incident_notices": (POLICY, f"org_id = {WORKSPACE}"),
}


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "OPEN",
                "CLOSED",
                name="incident_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("discovered_at", UTCDateTime(), nullable=False),
        sa.Column("notify_by", UTCDateTime(), nullable=False),
        sa.Column("post_mortem_due_at", UTCDateTime(), nullable=False),
        sa.Column("post_mortem_url", sa.String(length=2000), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_table(
        "incident_workspaces",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("notified_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_workspaces_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_incident_workspaces_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_workspaces")),
        sa.UniqueConstraint(
            "org_id", "incident_id", name=op.f("uq_incident_workspaces_org_id_incident_id")
        ),
    )
    op.create_index(
        op.f("ix_incident_workspaces_incident_id"), "incident_workspaces", ["incident_id"]
    )
    op.create_table(
        "incident_notices",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("notified_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_notices_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_incident_notices_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_notices")),
        sa.UniqueConstraint(
            "org_id",
            "incident_id",
            "user_id",
            name=op.f("uq_incident_notices_org_id_incident_id_user_id"),
        ),
    )
    op.create_index(op.f("ix_incident_notices_incident_id"), "incident_notices", ["incident_id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, (name, predicate) in READ_ONLY_POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {name} ON {table} FOR SELECT USING ({predicate})")
        create_owner_policy(table)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, (name, _) in READ_ONLY_POLICIES.items():
            op.execute(f"DROP POLICY IF EXISTS {OWNER_POLICY} ON {table}")
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
    op.drop_index(op.f("ix_incident_notices_incident_id"), table_name="incident_notices")
    op.drop_table("incident_notices")
    op.drop_index(op.f("ix_incident_workspaces_incident_id"), table_name="incident_workspaces")
    op.drop_table("incident_workspaces")
    op.drop_table("incidents")
