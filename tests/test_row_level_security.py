"""Tenant isolation at the database layer: PostgreSQL row-level security, alone.

Each test goes around the ORM filter (raw SQL, or no workspace in the ORM) and shows
that PostgreSQL itself refuses to show or write another workspace's rows.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import postgres_only
from tests.fixtures.factories import Actor
from weflux.db import Database
from weflux.models import Organization, workspace_models

pytestmark = postgres_only

_COUNT = text("SELECT count(*) FROM memberships")


async def test_app_role_is_neither_superuser_nor_bypassrls(db: Database) -> None:
    role = await db.role_check()
    assert role is not None
    assert not role.superuser
    assert not role.bypass_rls
    assert role.subject_to_rls


async def test_every_workspace_table_has_rls_enabled_and_forced(owner_db: Database) -> None:
    tables = [model.__tablename__ for model in workspace_models()] + [Organization.__tablename__]
    async with owner_db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                    "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
                    "FROM pg_class c WHERE c.relname = ANY(:tables)"
                ),
                {"tables": tables},
            )
        ).all()
    found = {row[0]: row[1:] for row in rows}
    assert set(found) == set(tables)
    for table, (enabled, forced, policies) in found.items():
        assert enabled, table
        assert forced, table
        assert policies >= 1, table


async def test_raw_sql_without_workspace_sees_no_rows(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with owner_db.engine.connect() as conn:  # the owner is not the app: it sees both
        assert (await conn.execute(_COUNT)).scalar_one() == 2
    async with db.engine.connect() as conn:
        assert (await conn.execute(_COUNT)).scalar_one() == 0
        assert (await conn.execute(text("SELECT count(*) FROM organizations"))).scalar_one() == 0


async def test_raw_sql_in_a_workspace_sees_only_that_workspace(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        rows = (await session.exec(text("SELECT id FROM memberships"))).all()  # type: ignore[call-overload]
    assert [row[0] for row in rows] == [admin.membership.id]


async def test_raw_insert_into_another_workspace_is_refused(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(admin.org_id) as session:
            await session.exec(  # type: ignore[call-overload]
                text(
                    "INSERT INTO audit_events (id, org_id, action, severity, details, created_at) "
                    "VALUES (:id, :org, 'x', 'info', '{}', now())"
                ),
                params={"id": uuid.uuid4(), "org": other_admin.org_id},
            )


async def test_raw_update_of_another_workspace_changes_nothing(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        result = await session.exec(  # type: ignore[call-overload]
            text("UPDATE memberships SET role = 'AGENT' WHERE id = :id"),
            params={"id": other_admin.membership.id},
        )
        assert result.rowcount == 0
    async with owner_db.engine.connect() as conn:
        role = (
            await conn.execute(
                text("SELECT role FROM memberships WHERE id = :id"),
                {"id": other_admin.membership.id},
            )
        ).scalar_one()
    assert role == "ADMIN"


async def test_workspace_setting_ends_with_the_transaction(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """set_config(..., true) is transaction-local: the next user of a pooled
    connection starts with no workspace."""
    single = Database(str(db.url.render_as_string(hide_password=False)), pool_size=1)
    try:
        async with single.session(admin.org_id) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        async with single.engine.connect() as conn:
            setting = (
                await conn.execute(text("SELECT current_setting('app.org_id', true)"))
            ).scalar_one()
            assert setting in (None, "")
            assert (await conn.execute(_COUNT)).scalar_one() == 0
    finally:
        await single.dispose()
