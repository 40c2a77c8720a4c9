"""The inbox counts against a brute-force recount, after random operations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from tests.fixtures.factories import (
    Actor,
    create_actor,
    create_contact,
    create_conversation,
    create_org,
    create_whatsapp_account,
)
from weflux.auth.scoping import restrict_to_agent, see_erased
from weflux.db import Database
from weflux.lifecycle.erasure import tombstone_contact
from weflux.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Membership,
    Role,
    WhatsAppAccount,
    utcnow,
)
from weflux.services.inbox_counts import InboxCounts, tally

ROLES = (Role.ADMIN, Role.MANAGER, Role.AGENT, Role.AGENT)
STATUSES = st.sampled_from(list(ConversationStatus))
# An assignee: an index into ROLES (the members of the workspace), or None.
ASSIGNEES = st.one_of(st.none(), st.integers(0, len(ROLES) - 1))
TARGETS = st.integers(0, 1_000)  # which conversation, modulo how many there are

Operation = tuple[Any, ...]
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.booleans(), ASSIGNEES, STATUSES, st.integers(0, 3)),
        st.tuples(st.just("assign"), TARGETS, ASSIGNEES),
        st.tuples(st.just("status"), TARGETS, STATUSES),
        st.tuples(st.just("read"), TARGETS),
        st.tuples(st.just("inbound"), TARGETS),
        st.tuples(st.just("erase"), TARGETS),
    ),
    max_size=14,
)


@dataclass
class Workspace:
    org_id: uuid.UUID
    account_id: uuid.UUID
    members: list[Actor]


async def _workspace(db: Database) -> Workspace:
    async with db.session() as session:
        org = await create_org(session)
        account = await create_whatsapp_account(session)
        members = [await create_actor(session, role) for role in ROLES]
    return Workspace(org.id, account.id, members)


async def _apply(
    db: Database, home: Workspace, other: Workspace, conversations: list[uuid.UUID], op: Operation
) -> None:
    """One operation, written as the services would leave the row."""
    kind = op[0]
    if kind == "create":
        _, elsewhere, assignee, status, unread = op
        where = other if elsewhere else home
        async with db.session(where.org_id) as session:
            created = await create_conversation(
                session,
                account=await session.get_one(WhatsAppAccount, where.account_id),
                assignee_membership_id=(
                    where.members[assignee].membership.id if assignee is not None else None
                ),
                status=status,
                unread_count=unread,
            )
        if not elsewhere:
            conversations.append(created.id)
        return
    if not conversations:
        return
    target = conversations[op[1] % len(conversations)]
    async with db.session(home.org_id) as session:
        row = await session.get(Conversation, target)
        if row is None:  # erased: hidden from every write too
            return
        if kind == "assign":
            row.assignee_membership_id = (
                home.members[op[2]].membership.id if op[2] is not None else None
            )
        elif kind == "status":
            row.status = op[2]
        elif kind == "read":
            row.unread_count = 0
        elif kind == "inbound":
            row.unread_count += 1
            if row.status == ConversationStatus.RESOLVED:
                row.status = ConversationStatus.OPEN
        elif kind == "erase":
            contact = await session.get_one(Contact, row.contact_id)
            await tombstone_contact(session, contact, now=utcnow())
            return
        session.add(row)


async def _counted(db: Database, home: Workspace, member: Actor) -> InboxCounts:
    """What the feature answers: one statement through the member's scoped session."""
    async with db.session(home.org_id) as session:
        if member.membership.role == Role.AGENT:
            restrict_to_agent(session, member.membership.id)
        return (await tally(session)).counts_for(member.membership.id)


async def _recounted(db: Database, home: Workspace, member: Actor) -> InboxCounts:
    """The brute force: every row of the workspace, the rules of CONTRACT §3 and §11."""
    async with db.session(home.org_id) as session:
        see_erased(session)
        rows = (await session.exec(select(Conversation))).all()
        assert {r.org_id for r in rows} <= {home.org_id}
    me = member.membership.id
    sees_all = member.membership.role in (Role.ADMIN, Role.MANAGER)
    counted = [
        r
        for r in rows
        if r.erased_at is None
        and r.status != ConversationStatus.RESOLVED
        and (sees_all or r.assignee_membership_id in (me, None))
    ]
    return InboxCounts(
        mine=sum(r.assignee_membership_id == me for r in counted),
        unassigned=sum(r.assignee_membership_id is None for r in counted),
        all=len(counted),
        unread=sum(r.unread_count > 0 for r in counted),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
async def test_the_counts_are_a_recount_of_what_each_member_sees(
    db: Database, operations: list[Operation]
) -> None:
    """Given a workspace with an Admin, a Manager and two Agents, and another workspace,
    when random conversations are created there and here, assigned, moved between
    statuses, read, written to and erased,
    then every member's four counts equal a brute-force recount of the rows by the
    visibility rules, and nothing of the other workspace is counted."""
    home, other = await _workspace(db), await _workspace(db)
    conversations: list[uuid.UUID] = []

    for op in operations:
        await _apply(db, home, other, conversations, op)

    for member in home.members:
        assert await _counted(db, home, member) == await _recounted(db, home, member), (
            member.membership.role
        )


async def test_a_removed_members_conversations_count_as_unassigned(db: Database) -> None:
    """Given an Agent's open conversation, when the Agent is removed from the workspace,
    then the Admin counts it as unassigned (ON DELETE SET NULL) and no longer as anyone's."""
    home = await _workspace(db)
    admin, agent = home.members[0], home.members[2]
    async with db.session(home.org_id) as session:
        await create_conversation(
            session,
            contact=await create_contact(session),
            account=await session.get_one(WhatsAppAccount, home.account_id),
            assignee_membership_id=agent.membership.id,
        )
    before = await _counted(db, home, admin)

    async with db.session(home.org_id) as session:
        membership = await session.get_one(Membership, agent.membership.id)
        await session.delete(membership)

    after = await _counted(db, home, admin)
    assert (before.unassigned, before.all) == (0, 1)
    assert (after.unassigned, after.all, after.mine) == (1, 1, 0)
    async with db.session(home.org_id) as session:
        orphans = (
            await session.exec(
                select(Conversation).where(col(Conversation.assignee_membership_id).is_not(None))
            )
        ).all()
    assert orphans == []
