"""Row-level security for workspace-owned tables (PostgreSQL), used by migrations."""

from __future__ import annotations

from alembic import op

POLICY = "tenant_isolation"

# The workspace of the transaction, set by weflux.auth.scoping with set_config(..., true).
# `app.all_workspaces` is set only by sessions opened with the explicit all_workspaces option.
_PREDICATE = (
    "{column} = NULLIF(current_setting('app.org_id', true), '')::uuid "
    "OR current_setting('app.all_workspaces', true) = 'on'"
)


def enable_tenant_rls(table: str, column: str = "org_id") -> None:
    """ENABLE and FORCE row-level security with the tenant policy on `table`."""
    if op.get_bind().dialect.name != "postgresql":
        return
    predicate = _PREDICATE.format(column=column)
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {POLICY} ON {table} USING ({predicate}) WITH CHECK ({predicate})")


def disable_tenant_rls(table: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
