"""Tenant isolation at the ORM layer, on both dialects."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Table, delete, insert, update
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy.exc import StatementError
from sqlmodel import col, select

from tests.fixtures.factories import (
    Actor,
    create_contact,
    create_conversation,
    create_membership,
    create_user,
)
from tests.fixtures.principals import principal_of
from weflux.auth import scoping
from weflux.auth.scoping import (
    TenantScopeError,
    agent_restriction,
    core_scope,
    core_scope_params,
    restrict_to_agent,
    use_workspace,
    viewing_as,
    workspace_wide,
)
from weflux.db import Database
from weflux.models import (
    AuditEvent,
    Contact,
    Conversation,
    ConversationLabel,
    Label,
    Membership,
    Message,
    Organization,
    Role,
    User,
    new_id,
    utcnow,
)
from weflux.services.conversations import AssigneeFilter, list_conversations


async def test_get_by_primary_key_of_another_workspace_returns_nothing(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        assert await session.get(Membership, other_admin.membership.id) is None
        assert await session.get(Organization, other_admin.org_id) is None
        assert await session.get(Membership, admin.membership.id) is not None


async def test_lists_and_joins_see_only_the_current_workspace(
    db: Database, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        memberships = (await session.exec(select(Membership))).all()
        users = (
            await session.exec(select(User).join(Membership, col(Membership.user_id) == User.id))
        ).all()
        organizations = (await session.exec(select(Organization))).all()
    assert {m.id for m in memberships} == {admin.membership.id, agent.membership.id}
    assert {u.id for u in users} == {admin.user.id, agent.user.id}
    assert [o.id for o in organizations] == [admin.org_id]


async def test_subqueries_are_scoped_too(db: Database, admin: Actor, other_admin: Actor) -> None:
    async with db.session(admin.org_id) as session:
        inner = select(Membership.user_id).scalar_subquery()
        users = (await session.exec(select(User).where(col(User.id).in_(inner)))).all()
    assert [u.id for u in users] == [admin.user.id]


async def test_bulk_update_and_delete_stay_in_the_workspace(
    db: Database, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        await session.exec(update(Membership).values(role=Role.MANAGER))
        await session.exec(delete(Membership).where(col(Membership.id) == agent.membership.id))
        await session.exec(
            delete(Membership).where(col(Membership.id) == other_admin.membership.id)
        )
    async with db.session(other_admin.org_id) as session:
        theirs = (await session.exec(select(Membership))).one()
    assert theirs.id == other_admin.membership.id
    assert theirs.role == Role.ADMIN


async def test_query_without_workspace_fails_closed(db: Database, admin: Actor) -> None:
    async with db.session() as session:
        with pytest.raises(TenantScopeError, match="no workspace set"):
            await session.exec(select(Membership))
        with pytest.raises(TenantScopeError):
            await session.get(Membership, admin.membership.id)
        with pytest.raises(TenantScopeError):
            await session.exec(update(Membership).values(role=Role.AGENT))
        with pytest.raises(TenantScopeError):
            await session.exec(select(User).join(Membership, col(Membership.user_id) == User.id))


async def test_global_tables_need_no_workspace(db: Database, admin: Actor) -> None:
    """The ORM layer lets statements on global tables run without a workspace. (On
    PostgreSQL the `users` policy then shows the members of the transaction's workspace
    only, issue 9 item 13: the user is read in its workspace.)"""
    async with db.session() as session:
        await session.exec(select(User).where(User.id == admin.user.id))
    async with db.session(admin.org_id) as session:
        user = (await session.exec(select(User).where(User.id == admin.user.id))).one()
    assert user.email == admin.user.email


async def test_new_rows_get_the_workspace_filled_in(db: Database, admin: Actor) -> None:
    async with db.session(admin.org_id) as session:
        event = AuditEvent(action="test.filled")
        session.add(event)
        await session.flush()
        assert event.org_id == admin.org_id


async def test_write_into_another_workspace_is_refused(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    with pytest.raises(TenantScopeError, match="another workspace"):
        async with db.session(admin.org_id) as session:
            session.add(AuditEvent(action="test.cross", org_id=other_admin.org_id))
    with pytest.raises(TenantScopeError, match="another workspace"):
        async with db.session(admin.org_id) as session:
            session.add(Organization(name="Sneaky"))
    async with db.session(other_admin.org_id) as session:
        assert (await session.exec(select(AuditEvent))).all() == []


async def test_moving_a_row_between_workspaces_is_refused(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        mine = await session.get(Membership, admin.membership.id)
        assert mine is not None
        mine.org_id = other_admin.org_id
        with pytest.raises(TenantScopeError):
            await session.flush()
        await session.rollback()
    async with db.session(admin.org_id) as session:
        assert await session.get(Membership, admin.membership.id) is not None


async def test_writes_without_workspace_are_refused(db: Database, admin: Actor) -> None:
    with pytest.raises(TenantScopeError, match="no workspace set"):
        async with db.session() as session:
            session.add(AuditEvent(action="test.orphan", org_id=admin.org_id))


async def test_bulk_insert_is_checked_and_filled(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session(admin.org_id) as session:
        await session.exec(insert(AuditEvent), params=[{"action": "bulk", "details": {}}])
        assert len((await session.exec(select(AuditEvent))).all()) == 1
    with pytest.raises(TenantScopeError):
        async with db.session(admin.org_id) as session:
            await session.exec(
                insert(AuditEvent),
                params=[{"action": "bulk", "details": {}, "org_id": other_admin.org_id}],
            )
    with pytest.raises(TenantScopeError, match="parameters"):
        async with db.session(admin.org_id) as session:
            await session.exec(insert(AuditEvent).values(action="inline", details={}))


async def test_all_workspaces_is_explicit_and_sees_everything(
    owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    """On the maintenance (schema owner's) handle; issue 9 item 13 keeps it off the app's."""
    async with owner_db.session(all_workspaces="test: count every membership") as session:
        memberships = (await session.exec(select(Membership))).all()
    assert {m.org_id for m in memberships} == {admin.org_id, other_admin.org_id}


async def test_the_apps_handle_cannot_cross_workspaces(db: Database) -> None:
    """Given the app's database handle (not maintenance),
    when a session asks for all workspaces,
    then it is refused before anything runs: the app crosses through weflux.auth.crossings."""
    with pytest.raises(TenantScopeError, match="maintenance"):
        async with db.session(all_workspaces="test: the app may not"):
            pass


async def test_use_workspace_narrows_an_open_transaction(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    async with db.session() as session:
        user = await create_user(session)
        await use_workspace(session, other_admin.org_id)
        membership = await create_membership(session, user=user)
        assert membership.org_id == other_admin.org_id
        visible = {m.id for m in (await session.exec(select(Membership))).all()}
    assert visible == {other_admin.membership.id, membership.id}


async def test_a_core_select_through_the_session_is_refused(db: Database, admin: Actor) -> None:
    """Given a session of a workspace,
    when a statement of Core tables (which the ORM criteria would not reach) reads or
    writes a workspace-owned table through it,
    then it is refused before it runs."""
    memberships: Table = Membership.__table__  # type: ignore[attr-defined]
    async with db.session(admin.org_id) as session:
        with pytest.raises(TenantScopeError, match="Core statement on memberships"):
            await session.execute(sa_select(memberships.c.id))
        with pytest.raises(TenantScopeError, match="Core statement"):
            await session.execute(memberships.update().values(role=Role.AGENT))


async def test_core_scope_confines_to_the_workspace_and_hides_erased_contacts(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given contacts in two workspaces, one of them erased,
    when a Core select with `core_scope` runs on the session's connection,
    then it sees only the workspace's contacts that are not erased."""
    contacts: Table = Contact.__table__  # type: ignore[attr-defined]
    async with db.session(other_admin.org_id) as session:
        await create_contact(session)
    async with db.session(admin.org_id) as session:
        kept = await create_contact(session)
        await create_contact(session, erased_at=utcnow())
    async with db.session(admin.org_id) as session:
        connection = await session.connection()
        statement = sa_select(contacts.c.id).where(core_scope(contacts))
        seen = (await connection.execute(statement, core_scope_params(session))).scalars().all()
    assert seen == [kept.id]


async def test_core_scope_params_fail_closed(db: Database, admin: Actor, agent: Actor) -> None:
    """Without a workspace, or for an Agent (whose restriction only the ORM applies), a
    Core statement gets no parameters."""
    async with db.session() as session:
        with pytest.raises(TenantScopeError, match="no workspace"):
            core_scope_params(session)
    async with db.session(admin.org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        with pytest.raises(TenantScopeError, match="Agent"):
            core_scope_params(session)


async def test_a_core_insert_is_checked_and_filled(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given rows for a Core INSERT through the session,
    then a row without a workspace gets the session's and one of another is refused."""
    contacts: Table = Contact.__table__  # type: ignore[attr-defined]
    async with db.session(admin.org_id) as session:
        await session.exec(sa_insert(contacts), params=[{"id": new_id(), "wa_id": "4930111"}])
        (row,) = (await session.exec(select(Contact))).all()
    assert row.org_id == admin.org_id
    with pytest.raises(TenantScopeError, match="another workspace"):
        async with db.session(admin.org_id) as session:
            await session.exec(
                sa_insert(contacts),
                params=[{"id": new_id(), "wa_id": "4930222", "org_id": other_admin.org_id}],
            )


async def test_viewing_as_another_role_gives_the_session_its_own_back(
    db: Database, org: Organization
) -> None:
    """`viewing_as` applies the given Agent restriction (or none) inside, and the
    session's own afterwards: an Agent's stays, a Manager's session gains none."""
    agent, other = uuid.uuid4(), uuid.uuid4()
    async with db.session(org.id) as session:
        with viewing_as(session, agent):
            assert agent_restriction(session) == agent
        assert agent_restriction(session) is None  # none before, none after
        restrict_to_agent(session, other)
        with viewing_as(session, agent):
            assert agent_restriction(session) == agent
        with viewing_as(session, None), workspace_wide(session):
            assert agent_restriction(session) is None
        assert agent_restriction(session) == other


# -- the tables of a statement, cached per statement (issue 11) -----------------------------
# What a statement touches is kept per statement object; the decision (workspace, Agent,
# erasure view) is the session's at each execution. The statements below are built once
# and run again, as the hot paths' module-level statements are.


async def test_one_statement_run_again_is_confined_by_each_sessions_scope(
    db: Database, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    """Given one select object run in turn by two workspaces, an Agent and an Admin,
    then each execution sees what its own session may see, whatever ran before."""
    statement = select(Conversation)
    async with db.session(admin.org_id) as session:
        mine = await create_conversation(session, assignee_membership_id=agent.membership.id)
        others = await create_conversation(session, assignee_membership_id=admin.membership.id)
        unassigned = await create_conversation(session)
    async with db.session(other_admin.org_id) as session:
        foreign = await create_conversation(session)

    async def seen(org_id: uuid.UUID, as_agent: Actor | None = None) -> set[uuid.UUID]:
        async with db.session(org_id) as session:
            if as_agent is not None:
                restrict_to_agent(session, as_agent.membership.id)
            return {c.id for c in (await session.exec(statement)).all()}

    everything = {mine.id, others.id, unassigned.id}
    assert await seen(admin.org_id) == everything
    assert await seen(admin.org_id, as_agent=agent) == {mine.id, unassigned.id}
    assert await seen(other_admin.org_id) == {foreign.id}
    assert await seen(admin.org_id) == everything
    with pytest.raises(TenantScopeError, match="no workspace set for a statement on conversations"):
        async with db.session() as session:
            await session.exec(statement)


async def test_the_visible_parts_narrow_and_need_their_agent(
    db: Database, admin: Actor, agent: Actor, other_agent: Actor, other_admin: Actor
) -> None:
    """Given the statements of the visible parts (`VISIBLE_PARTS`, built once, the Agent a
    bound value),
    then an Agent's parameters read their conversations and nobody's; another member's
    id in the parameter reads nothing the Agent may not see (the session's criteria still
    confine every part); a part run without its Agent fails; an Admin has no parts."""
    parts = [select(Conversation).where(part) for part in scoping.VISIBLE_PARTS]
    async with db.session(admin.org_id) as session:
        mine = await create_conversation(session, assignee_membership_id=agent.membership.id)
        theirs = await create_conversation(
            session, assignee_membership_id=other_agent.membership.id
        )
        unassigned = await create_conversation(session)
    async with db.session(other_admin.org_id) as session:
        await create_conversation(session)

    async def seen(params: dict[str, Any]) -> list[set[uuid.UUID]]:
        async with db.session(admin.org_id) as session:
            restrict_to_agent(session, agent.membership.id)
            return [
                {c.id for c in (await session.exec(part, params=params)).all()} for part in parts
            ]

    async with db.session(admin.org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        own = scoping.visible_parts(session)
    assert own == {scoping.VISIBLE_AGENT: agent.membership.id}
    assert await seen(own) == [{mine.id}, {unassigned.id}]
    assert theirs.id not in set().union(
        *await seen({scoping.VISIBLE_AGENT: other_agent.membership.id})
    )
    with pytest.raises(StatementError, match="visible_agent"):
        await seen({})
    async with db.session(admin.org_id) as session:
        assert scoping.visible_parts(session) is None


async def test_labellings_narrow_an_agents_conversations_but_never_widen_them(
    db: Database, admin: Actor, agent: Actor, other_agent: Actor
) -> None:
    """Given a label on the Agent's conversation, another Agent's and nobody's, and the
    other Agent's labelling's copy of its assignee naming the Agent (out of step, as no
    writer leaves it),
    when the Agent reads the label's pages (its labellings walked without the Agent's
    restriction of each labelling: `CONVERSATIONS_BY_LABELLINGS`),
    then each conversation is still read under the restriction: the other Agent's is
    never listed; and the option on a read of anything but conversations is refused."""
    async with db.session(admin.org_id) as session:
        mine = await create_conversation(session, assignee_membership_id=agent.membership.id)
        theirs = await create_conversation(
            session, assignee_membership_id=other_agent.membership.id
        )
        unassigned = await create_conversation(session)
        label = Label(org_id=admin.org_id, name="vip", color="#ff0000")
        session.add(label)
        await session.flush()
        for conversation in (mine, theirs, unassigned):
            session.add(
                ConversationLabel(
                    org_id=admin.org_id, conversation_id=conversation.id, label_id=label.id
                )
            )
        await session.flush()
        await session.exec(
            update(ConversationLabel)
            .where(col(ConversationLabel.conversation_id) == theirs.id)
            .values(assignee_membership_id=agent.membership.id)
        )
    principal = principal_of(agent)
    async with db.session(admin.org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        pages = {
            assignee: {
                row.id
                for row, _ in (
                    await list_conversations(session, principal, assignee=assignee, label=label.id)
                ).items
            }
            for assignee in AssigneeFilter
        }
        with pytest.raises(TenantScopeError, match=scoping.CONVERSATIONS_BY_LABELLINGS):
            await session.exec(
                select(ConversationLabel).execution_options(
                    **{scoping.CONVERSATIONS_BY_LABELLINGS: True}
                )
            )
    assert pages == {
        AssigneeFilter.ANY: {mine.id, unassigned.id},
        AssigneeFilter.ME: {mine.id},
        AssigneeFilter.UNASSIGNED: {unassigned.id},
    }


async def test_insert_checked_runs_on_the_connection_each_row_checked(
    db: Database, admin: Actor, other_admin: Actor, agent: Actor
) -> None:
    """Given rows for a Core INSERT run on the session's connection by `insert_checked`
    (the webhook's hot path: no ORM execution around it),
    then a row without a workspace gets the session's, one of another workspace is
    refused and nothing of the statement is written, and it fails closed without a
    workspace, for an Agent, into a table no workspace owns and with the values in the
    statement instead of rows."""
    contacts: Table = Contact.__table__  # type: ignore[attr-defined]
    users: Table = User.__table__  # type: ignore[attr-defined]

    def run(statement: Any, rows: list[dict[str, Any]]) -> Callable[[Any], None]:
        return lambda sync: scoping.insert_checked(sync, sync.connection(), statement, rows)

    async with db.session(admin.org_id) as session:
        await session.run_sync(run(sa_insert(contacts), [{"id": new_id(), "wa_id": "4931111"}]))
        (row,) = (await session.exec(select(Contact))).all()
    assert row.org_id == admin.org_id
    mixed = [
        {"id": new_id(), "wa_id": "4931222", "org_id": admin.org_id},
        {"id": new_id(), "wa_id": "4931333", "org_id": other_admin.org_id},
    ]
    with pytest.raises(TenantScopeError, match="another workspace"):
        async with db.session(admin.org_id) as session:
            await session.run_sync(run(sa_insert(contacts), mixed))
    for org_id in (admin.org_id, other_admin.org_id):
        async with db.session(org_id) as session:
            found = (await session.exec(select(Contact.wa_id))).all()
        assert found == (["4931111"] if org_id == admin.org_id else [])
    refusals: list[tuple[uuid.UUID | None, Any, str]] = [
        (None, sa_insert(contacts), "no workspace"),
        (admin.org_id, sa_insert(users), "not users"),
        (admin.org_id, sa_insert(contacts).values(id=new_id(), org_id=admin.org_id), "rows"),
    ]
    for org_id, statement, why in refusals:
        with pytest.raises(TenantScopeError, match=why):
            async with db.session(org_id) as session:
                await session.run_sync(run(statement, [{"id": new_id(), "wa_id": "4931444"}]))
    async with db.session(admin.org_id) as session:
        restrict_to_agent(session, agent.membership.id)
        with pytest.raises(TenantScopeError, match="Agent"):
            await session.run_sync(run(sa_insert(contacts), [{"wa_id": "4931555"}]))


async def test_one_insert_run_again_is_checked_for_each_sessions_workspace(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given one Core INSERT object run by two workspaces and by a session without one,
    then each row gets (or must carry) its own session's workspace, and without a
    workspace it is refused, however often it ran before."""
    statement = sa_insert(Contact.__table__)  # type: ignore[attr-defined]
    for n, org_id in enumerate((admin.org_id, other_admin.org_id, admin.org_id)):
        async with db.session(org_id) as session:
            await session.exec(statement, params=[{"id": new_id(), "wa_id": f"493033{n}"}])
    for org_id in (admin.org_id, other_admin.org_id):
        async with db.session(org_id) as session:
            rows = (await session.exec(select(Contact))).all()
        assert {row.org_id for row in rows} == {org_id}
        assert len(rows) == (2 if org_id == admin.org_id else 1)
    with pytest.raises(TenantScopeError, match="no workspace set"):
        async with db.session() as session:
            await session.exec(statement, params=[{"id": new_id(), "wa_id": "4930444"}])
    with pytest.raises(TenantScopeError, match="another workspace"):
        async with db.session(admin.org_id) as session:
            await session.exec(
                statement,
                params=[{"id": new_id(), "wa_id": "4930555", "org_id": other_admin.org_id}],
            )


def test_the_tables_of_a_statement_belong_to_it() -> None:
    """Statements built and dropped in turn (new ones may take a dropped one's address)
    each get the tables of their own tree (`_tables_in`, cached per statement), never a
    cached answer of another."""
    shapes: dict[str, Callable[[], Any]] = {
        "contacts": lambda: sa_select(Contact.__table__),  # type: ignore[attr-defined]
        "messages": lambda: select(Message.id).where(col(Message.text) == "x"),
        "memberships": lambda: update(Membership).values(role=Role.AGENT),
        "nothing": lambda: sa_select(User.__table__),  # type: ignore[attr-defined]
    }
    expected = {
        "contacts": frozenset({"contacts"}),
        "messages": frozenset({"messages"}),
        "memberships": frozenset({"memberships"}),
        "nothing": frozenset({"users"}),
    }
    for round_ in range(200):
        name = list(shapes)[round_ % len(shapes)]
        statement = shapes[name]()
        assert frozenset(scoping._tables_in(statement)) == expected[name]
        assert frozenset(scoping._tables_in(statement)) == expected[name]  # now from the cache
        del statement
    joined = sa_select(Contact.__table__).where(  # type: ignore[attr-defined]
        Contact.__table__.c.id.in_(sa_select(Message.__table__.c.id))  # type: ignore[attr-defined]
    )
    assert frozenset(scoping._tables_in(joined)) == {"contacts", "messages"}
