"""Row-level security for workspace-owned tables (PostgreSQL), used by migrations.

Each table gets two policies:

- `tenant_isolation`, for every role: a row is visible and writable only in a
  transaction whose `app.org_id` (set by weflux.auth.scoping with `set_config(…, true)`)
  is its workspace. Nothing else in the predicate: no switch opens every workspace.
- `schema_owner`, for the role that ran the migration: every row. That role owns the
  tables and could switch row-level security off anyway; its policy lets maintenance
  (`weflux keys rotate`, `weflux webhooks replay`) and the SECURITY DEFINER functions
  of weflux.auth.crossings, which run as it, work without a superuser.
"""

from __future__ import annotations

from alembic import op

POLICY = "tenant_isolation"
OWNER_POLICY = "schema_owner"
WORKSPACE = "NULLIF(current_setting('app.org_id', true), '')::uuid"


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def create_owner_policy(table: str) -> None:
    """Let the migrating role (the tables' owner) see and write every row of `table`."""
    op.execute(f"DROP POLICY IF EXISTS {OWNER_POLICY} ON {table}")
    op.execute(f"CREATE POLICY {OWNER_POLICY} ON {table} TO CURRENT_USER USING (true)")


def create_tenant_policy(table: str, column: str = "org_id") -> None:
    """(Re)create the tenant policy of `table`: its rows of the transaction's workspace."""
    predicate = f"{column} = {WORKSPACE}"
    op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
    op.execute(f"CREATE POLICY {POLICY} ON {table} USING ({predicate}) WITH CHECK ({predicate})")


def enable_tenant_rls(table: str, column: str = "org_id") -> None:
    """ENABLE and FORCE row-level security with the tenant and owner policies on `table`."""
    if not _postgresql():
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    create_tenant_policy(table, column)
    create_owner_policy(table)


def disable_tenant_rls(table: str) -> None:
    if not _postgresql():
        return
    op.execute(f"DROP POLICY IF EXISTS {OWNER_POLICY} ON {table}")
    op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
