"""Writes folded into one statement (weflux.services.folding): every part is checked by the
scoping layer before it is sent, and confined by row-level security beneath it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import DBAPIError
from sqlmodel import col
from sqlmodel import select as sqlmodel_select

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor
from weflux.auth.scoping import (
    ALL_WORKSPACES_KEY,
    SCOPE_ORG,
    TenantScopeError,
    checked_folded,
    core_scope,
    core_scope_params,
    restrict_to_agent,
)
from weflux.db import Database
from weflux.models import AuditEvent, Contact, Organization, new_id, utcnow
from weflux.pg_driver import PreparedSelect, fetch_in_transaction
from weflux.services import folding
from weflux.services.ingest.writes import _UPDATE_CONTACTS

_CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
_AUDIT: Table = AuditEvent.__table__  # type: ignore[attr-defined]


def _contact(org_id: uuid.UUID | None, wa_id: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": new_id(),
        "org_id": org_id,
        "wa_id": wa_id,
        "phone_number": f"+{wa_id}",
        "created_at": now,
        "updated_at": now,
    }


def _audit(org_id: uuid.UUID | None) -> dict[str, Any]:
    return {
        "id": new_id(),
        "org_id": org_id,
        "action": "test.folded",
        "details": {},
        "created_at": utcnow(),
    }


async def _contacts(db: Database, org_id: uuid.UUID) -> list[str | None]:
    async with db.session(org_id) as session:
        rows = await session.exec(sqlmodel_select(Contact.wa_id).order_by(col(Contact.wa_id)))
        return list(rows.all())


@postgres_only
async def test_folded_writes_land_in_one_statement(db: Database, org: Organization) -> None:
    """Given two contacts to insert (one with no workspace given) and a change of one,
    when they are folded after an audit event's insert,
    then one statement writes them all, the empty workspace filled from the session's."""
    known = _contact(org.id, "4930100")
    async with db.session(org.id) as session:
        await folding.send(
            session,
            folding.Writes([folding.Insert(_CONTACTS, [known])]),
            {**core_scope_params(session)},
        )
    async with db.session(org.id) as session:
        writes = folding.Writes()
        writes.add(
            folding.Insert(_CONTACTS, [_contact(None, "4930101"), _contact(org.id, "4930102")])
        )
        row = {"contact": known["id"], **{k: None for k in ("user_id", "username", "name")}}
        row |= {"wa_id": "4930100", "profile_name": "Renamed", "phone_number": "+4930100"}
        row |= {"opted_out": False, "opted_out_at": None, "updated_at": utcnow()}
        writes.add(folding.Update(_UPDATE_CONTACTS, [row]))
        statement, _ = folding.fold(
            [folding.Insert(_AUDIT, [_audit(org.id)]), *writes.parts], core_scope_params(session)
        )
        assert str(statement).startswith("WITH")
        await folding.send(
            session, writes, core_scope_params(session), folding.Insert(_AUDIT, [_audit(None)])
        )
    assert await _contacts(db, org.id) == ["4930100", "4930101", "4930102"]
    async with db.session(org.id) as session:
        renamed = await session.get(Contact, known["id"])
        assert renamed is not None
        assert renamed.profile_name == "Renamed"
        assert len((await session.exec(sqlmodel_select(AuditEvent))).all()) == 1
    # UPDATEs alone (no INSERT to be the statement): each sent on its own, still scoped.
    async with db.session(org.id) as session:
        alone = folding.Writes([folding.Update(_UPDATE_CONTACTS, [row | {"name": "Alone"}])])
        await folding.send(session, alone, core_scope_params(session))
    async with db.session(org.id) as session:
        renamed = await session.get(Contact, known["id"])
        assert renamed is not None
        assert renamed.name == "Alone"


async def test_a_folded_insert_into_another_workspace_is_refused(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a folded statement whose outer INSERT is the session's workspace's,
    when one of its CTEs inserts a row of another workspace (as a parameter, or as a value
    written into the statement),
    then the scoping layer refuses it before anything is sent (on either engine)."""
    scope = {SCOPE_ORG: org.id}
    theirs = folding.Insert(_CONTACTS, [_contact(other_org.id, "4930200")])
    written = _CONTACTS.insert().values(**_contact(other_org.id, "4930201")).cte("sneaky")
    attempts = [
        folding.fold([folding.Insert(_AUDIT, [_audit(org.id)]), theirs], scope),
        folding.fold([folding.Insert(_AUDIT, [_audit(None)]), theirs], scope),
        (_AUDIT.insert().values(**_audit(org.id)).add_cte(written), {}),
    ]
    for statement, params in attempts:
        with pytest.raises(TenantScopeError, match="another workspace"):
            async with db.session(org.id) as session:
                await session.exec(statement, params=params)  # type: ignore[call-overload]
    assert await _contacts(db, other_org.id) == []


async def test_folded_changes_need_core_scope_and_selects_are_refused(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a folded statement,
    when a CTE updates a workspace-owned table without `core_scope`, with another
    workspace's scope, or moves a row's workspace, or when a CTE selects from one,
    then each is refused."""
    audit = _AUDIT.insert().values(**_audit(org.id))
    unscoped = _CONTACTS.update().where(_CONTACTS.c.wa_id == "x").values(name="n").cte("u")
    scoped = (
        _CONTACTS.update().where(_CONTACTS.c.wa_id == "x", core_scope(_CONTACTS)).values(name="n")
    )
    moving = scoped.values(org_id=other_org.id).cte("m")
    reading = select(_CONTACTS.c.id).cte("r")
    for cte, params, match in (
        (unscoped, {SCOPE_ORG: org.id}, "core_scope"),
        (scoped.cte("s"), {SCOPE_ORG: other_org.id}, "core_scope"),
        (moving, {SCOPE_ORG: org.id}, "between workspaces"),
        (reading, {}, "CTE reading"),
    ):
        with pytest.raises(TenantScopeError, match=match):
            async with db.session(org.id) as session:
                await session.exec(audit.add_cte(cte), params=params)


async def test_a_folded_insert_may_read_what_core_scope_confines(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a folded statement whose CTE or value reads contacts (a webhook's sender found
    inside the statement that writes: weflux.services.ingest.pg_single),
    when the read carries `core_scope` with another workspace's scope, or reads without it
    in a value, through an alias or in a join,
    then each is refused; with `core_scope` of the session's workspace it is checked and
    allowed (on either engine)."""
    confined = select(_CONTACTS.c.id).where(core_scope(_CONTACTS)).limit(1).cte("sender")
    unconfined = select(_CONTACTS.c.id).where(_CONTACTS.c.wa_id == "x").scalar_subquery()
    aliased = _CONTACTS.alias("c")
    through_alias = select(aliased.c.id).where(aliased.c.org_id == org.id).cte("a")

    def audit(actor: Any) -> Any:
        return _AUDIT.insert().values(**_audit(org.id), actor_user_id=actor)

    for statement, params, match in (
        (audit(select(confined.c.id).scalar_subquery()), {SCOPE_ORG: other_org.id}, "core_scope"),
        (audit(unconfined), {SCOPE_ORG: org.id}, "without core_scope"),
        (audit(None).add_cte(through_alias), {SCOPE_ORG: org.id}, "join or alias"),
    ):
        with pytest.raises(TenantScopeError, match=match):
            async with db.session(org.id) as session:
                await session.exec(statement, params=params)
    async with db.session(org.id) as session:
        statement = audit(select(confined.c.id).scalar_subquery())
        await session.exec(statement, params=core_scope_params(session))


@postgres_only
async def test_row_level_security_confines_a_folded_statement(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a folded statement with a CTE inserting another workspace's contact,
    when it goes around the scoping layer (run on the session's connection),
    then PostgreSQL's row-level security refuses the whole statement: nothing is written."""
    statement, params = folding.fold(
        [
            folding.Insert(_CONTACTS, [_contact(org.id, "4930300")]),
            folding.Insert(_CONTACTS, [_contact(other_org.id, "4930301")]),
        ],
        {SCOPE_ORG: org.id},
    )
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(org.id) as session:
            await (await session.connection()).execute(statement, params)
    assert await _contacts(db, org.id) == []
    assert await _contacts(db, other_org.id) == []


async def test_a_folded_insert_run_past_the_session_is_checked_as_through_it(
    db: Database, org: Organization, other_org: Organization, agent: Actor
) -> None:
    """Given folded statements the session's hook refuses (another workspace's row, a
    change without `core_scope` or with another workspace's, an unconfined read),
    when their parameters are checked for a run past SQLAlchemy's execution
    (`scoping.checked_folded`, weflux.services.ingest.pg_single's path),
    then each is refused alike, and so is any of them without a workspace, across
    workspaces, for an Agent, or a statement that is no INSERT; a row without a workspace
    gets the session's."""
    audit = _AUDIT.insert().values(**_audit(org.id))
    theirs = folding.Insert(_CONTACTS, [_contact(other_org.id, "4930400")])
    scoped = _CONTACTS.update().where(_CONTACTS.c.wa_id == "x", core_scope(_CONTACTS))
    unconfined = select(_CONTACTS.c.id).where(_CONTACTS.c.wa_id == "x").scalar_subquery()
    refused: list[tuple[Any, dict[str, Any], str]] = [
        (*folding.fold([folding.Insert(_AUDIT, [_audit(org.id)]), theirs], {}), "another"),
        (audit.add_cte(scoped.values(name="n").cte("s")), {SCOPE_ORG: other_org.id}, "core_scope"),
        (audit.add_cte(scoped.values(org_id=other_org.id).cte("m")), {}, "between workspaces"),
        (_AUDIT.insert().values(**_audit(org.id), actor_user_id=unconfined), {}, "core_scope"),
        (scoped.values(name="n"), {SCOPE_ORG: org.id}, "an INSERT"),
    ]
    async with db.session(org.id) as session:
        for statement, params, match in refused:
            with pytest.raises(TenantScopeError, match=match):
                checked_folded(session, statement, {SCOPE_ORG: org.id} | params)
        statement, params = folding.fold([folding.Insert(_AUDIT, [_audit(None)])], {})
        checked = checked_folded(session, statement, params)
        assert checked["i0r0_org_id"] == org.id
        restrict_to_agent(session, agent.membership.id)
        with pytest.raises(TenantScopeError, match="Agent"):
            checked_folded(session, statement, params)
    async with db.session() as session:
        with pytest.raises(TenantScopeError, match="no workspace"):
            checked_folded(session, statement, params)
    async with db.session(org.id) as session:
        session.sync_session.info[ALL_WORKSPACES_KEY] = "a test"  # as `all_workspaces` sets it
        with pytest.raises(TenantScopeError, match="no workspace"):
            checked_folded(session, statement, params)


@postgres_only
async def test_row_level_security_confines_a_folded_statement_run_past_the_session(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a folded statement with a CTE inserting another workspace's contact,
    when it runs past SQLAlchemy's execution and the scoping layer (`fetch_in_transaction`
    on the session's connection, as weflux.services.ingest.pg_single's statement runs),
    then row-level security refuses the whole statement: nothing is written."""
    statement, params = folding.fold(
        [
            folding.Insert(_CONTACTS, [_contact(org.id, "4930500")]),
            folding.Insert(_CONTACTS, [_contact(other_org.id, "4930501")]),
        ],
        {SCOPE_ORG: org.id},
    )
    prepared = PreparedSelect(statement)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(org.id) as session:
            await fetch_in_transaction(await session.connection(), prepared, params)
    assert await _contacts(db, org.id) == []
    assert await _contacts(db, other_org.id) == []
