"""Model rules: ids, emails, and the shape of every workspace-owned table."""

from __future__ import annotations

import pytest
from sqlalchemy import Index, Table
from sqlalchemy.exc import IntegrityError

from tests.fixtures.factories import create_user
from weflux.db import Database
from weflux.models import new_id, workspace_models


def test_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(200)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)


async def test_email_is_unique_case_insensitively(db: Database) -> None:
    async with db.session() as session:
        await create_user(session, email="Ada@Example.com")
    with pytest.raises(IntegrityError) as error:
        async with db.session() as session:
            await create_user(session, email="ada@example.COM")
    # Errors (and so logs) never carry the values, only the statement.
    assert "ada@example.COM" not in str(error.value)


@pytest.mark.parametrize("model", workspace_models(), ids=lambda m: m.__tablename__)
def test_workspace_tables_have_a_non_null_org_id_leading_an_index(model: type) -> None:
    table: Table = model.__table__  # type: ignore[attr-defined]
    assert not table.c.org_id.nullable
    assert any(fk.column.table.name == "organizations" for fk in table.c.org_id.foreign_keys)
    leading = [
        index
        for index in table.indexes
        if isinstance(index, Index) and index.columns and index.columns[0].name == "org_id"
    ]
    unique_leading = [
        c
        for c in table.constraints
        if getattr(c, "columns", None)
        and next(iter(c.columns)).name == "org_id"  # type: ignore[attr-defined]
        and c is not table.primary_key
    ]
    assert leading or unique_leading, f"{table.name} has no index led by org_id"


def test_the_core_tables_are_workspace_owned() -> None:
    names = {m.__tablename__ for m in workspace_models()}
    assert {"memberships", "sessions", "audit_events", "invitations"} <= names
