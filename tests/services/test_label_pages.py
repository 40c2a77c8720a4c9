"""A label's inbox pages read a page, not the label: alone and with the status and assignee
filters, for an Admin, a Manager and an Agent, first and after a cursor (EXPLAIN
(ANALYZE) on PostgreSQL as the app's role, row-level security on: rows read); the pages
together are exactly the labelled conversations each may see, in the list's order, on
both engines; each shape's statement is built once."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import NoSuchColumnError
from sqlmodel import col, select

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor, create_actor
from tests.fixtures.plans import InboxWorkspace, analyze, explained, inbox_workspace, rows_read
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import Conversation, ConversationLabel, ConversationStatus, Role, utcnow
from weflux.pagination import Page
from weflux.services.conversations import AssigneeFilter, list_conversations

PAGE = 20
CONVERSATIONS = 10_000
# Rows a labelled page may read on PostgreSQL, of conversations and of labellings each:
# up to two parts (an Agent's) of PAGE + 1 rows, each walk passing one row in ten of
# what it reads (the label on one conversation in ten), a part's few undated ones; or,
# where PostgreSQL finds it cheaper at this size, an Agent's part after the cursor read
# and sorted (about 500 rows here; a walk at 200,000: `bench.inbox_list`). Before the
# labellings held the list's order, an Admin's page read all 10,000 conversations or
# every labelling of the label (5,000 of the half label) and sorted them.
BOUND = 1000


@dataclass(frozen=True)
class Shape:
    label: str  # InboxWorkspace's attribute: "label" (one in ten), "half_label" (one in two)
    status: ConversationStatus | None = None
    assignee: AssigneeFilter = AssigneeFilter.ANY

    def __str__(self) -> str:
        return f"{self.label}+{self.status and self.status.value}+{self.assignee.value}"


SHAPES = [
    Shape("label"),
    Shape("half_label"),
    Shape("half_label", status=ConversationStatus.OPEN),
    Shape("half_label", assignee=AssigneeFilter.ME),
    Shape("half_label", assignee=AssigneeFilter.UNASSIGNED),
    Shape("half_label", status=ConversationStatus.OPEN, assignee=AssigneeFilter.ME),
    Shape("half_label", status=ConversationStatus.OPEN, assignee=AssigneeFilter.UNASSIGNED),
]


async def _page(
    db: Database,
    ws: InboxWorkspace,
    actor: Actor,
    shape: Shape,
    *,
    first: int = PAGE,
    after: str | None = None,
) -> Page[Conversation]:
    """One page as `actor` (an Agent's restriction in their session)."""
    async with db.session(ws.org_id) as session:
        if actor.membership.role == Role.AGENT:
            restrict_to_agent(session, actor.membership.id)
        return await list_conversations(
            session,
            principal_of(actor),
            first=first,
            after=after,
            status=shape.status,
            assignee=shape.assignee,
            label=getattr(ws, shape.label),
        )


@pytest.fixture
async def big_inbox(db: Database, owner_db: Database) -> tuple[InboxWorkspace, Actor]:
    """10,000 conversations (tests.fixtures.plans.inbox_workspace: one in ten labelled
    `label`, one in two `half_label`) with statistics, and a Manager of the workspace."""
    ws = await inbox_workspace(db, CONVERSATIONS)
    async with db.session(ws.org_id) as session:
        manager = await create_actor(session, Role.MANAGER)
    async with owner_db.engine.connect() as connection:
        await analyze(connection)
        await connection.exec_driver_sql("ANALYZE conversation_labels")
    return ws, manager


@postgres_only
@pytest.mark.parametrize("role", ["admin", "manager", "agent"])
async def test_each_labelled_page_reads_about_a_page(
    db: Database, big_inbox: tuple[InboxWorkspace, Actor], role: str
) -> None:
    """Given 10,000 conversations, half of them labelled one way and a tenth another,
    when the Admin, a Manager or the Agent reads the first page of 20 of a label, alone
    and with each status and assignee filter, and the third (by the cursor),
    then PostgreSQL (the app's role, row-level security on) reads at most a few pages'
    rows of conversations and of labellings for each, never the label's 5,000."""
    ws, manager = big_inbox
    actor = {"admin": ws.admin, "manager": manager, "agent": ws.agent}[role]
    for shape in SHAPES:
        cursor = None
        for _ in range(2):
            page = await _page(db, ws, actor, shape, after=cursor)
            cursor = page.items[-1][1] if page.has_next_page else None
            if cursor is None:
                break
        # Only the Agent has conversations of their own.
        assert cursor is not None or (shape.assignee == AssigneeFilter.ME and actor is not ws.agent)
        for after in (None, cursor) if cursor else (None,):
            async with db.session(ws.org_id) as session:
                if actor is ws.agent:
                    restrict_to_agent(session, ws.agent.membership.id)
                # The plan is taken before the ORM reads the result.
                with explained(db, analyze=True) as plans, contextlib.suppress(NoSuchColumnError):
                    await list_conversations(
                        session,
                        principal_of(actor),
                        first=PAGE,
                        after=after,
                        status=shape.status,
                        assignee=shape.assignee,
                        label=getattr(ws, shape.label),
                    )
            where = f"{role} {shape} {'after a cursor' if after else 'first page'}"
            shown = "\n".join(line for plan in plans for line in plan)
            for table in ("conversations", "conversation_labels"):
                read = sum(rows_read(plan, table) for plan in plans)
                assert read <= BOUND, f"{where}: {read} rows of {table}\n{shown}"


def _wanted(
    rows: list[Conversation], labelled: set[uuid.UUID], actor: Actor, shape: Shape, agent: bool
) -> list[uuid.UUID]:
    """The straightforward answer: every visible labelled conversation of the filter, in
    the list's order (last activity first, undated last, then id, both descending)."""
    me = actor.membership.id
    floor = datetime.min.replace(tzinfo=utcnow().tzinfo)
    return [
        row.id
        for row in sorted(
            rows,
            key=lambda r: (r.last_message_at is not None, r.last_message_at or floor, r.id),
            reverse=True,
        )
        if row.id in labelled
        and (not agent or row.assignee_membership_id in (me, None))
        and (shape.status is None or row.status == shape.status)
        and (
            shape.assignee == AssigneeFilter.ANY
            or row.assignee_membership_id == (me if shape.assignee == AssigneeFilter.ME else None)
        )
    ]


async def test_the_labelled_pages_are_the_visible_labelled_conversations_in_order(
    db: Database,
) -> None:
    """Given 600 conversations (some sharing a last activity, some without one, a few
    erased), labelled one in ten and one in two, and then a third of the half label's
    conversations given a new last activity (as a message would),
    when the Admin and the Agent page through each labelled filter by 7,
    then the pages together are exactly the labelled conversations each may see, once
    each, in the list's order: the Agent never sees another member's conversation, and
    a conversation's new activity moves it in its label's list too."""
    ws = await inbox_workspace(db, 600)
    tie = utcnow().replace(microsecond=0)
    async with db.session(ws.org_id) as session:
        ids = sorted((await session.exec(select(col(Conversation.id)))).all())
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id).in_(ids[::9]))
            .values(last_message_at=tie)
        )
        for n, conversation_id in enumerate(ids[1::3]):
            await session.exec(
                update(Conversation)
                .where(col(Conversation.id) == conversation_id)
                .values(last_message_at=tie + timedelta(seconds=n % 40))
            )
        rows = list((await session.exec(select(Conversation))).all())
        labellings = (
            await session.exec(
                select(ConversationLabel.label_id, ConversationLabel.conversation_id)
            )
        ).all()
    agent_ids = {row.id for row in rows if row.assignee_membership_id == ws.agent.membership.id}
    assert agent_ids
    assert any(row.assignee_membership_id is None for row in rows)
    for actor in (ws.admin, ws.agent):
        for shape in SHAPES:
            label = getattr(ws, shape.label)
            labelled = {conversation for of, conversation in labellings if of == label}
            wanted = _wanted(rows, labelled, actor, shape, actor is ws.agent)
            assert wanted or shape.assignee == AssigneeFilter.ME, f"{shape}: an empty case"
            seen: list[uuid.UUID] = []
            cursor: str | None = None
            while True:
                page = await _page(db, ws, actor, shape, first=7, after=cursor)
                seen += [row.id for row, _ in page.items]
                if not page.has_next_page:
                    break
                cursor = page.items[-1][1]
            assert seen == wanted, f"{actor.membership.role} {shape}"
            if actor is ws.agent:
                others = {row.id for row in rows} - agent_ids
                unassigned = {row.id for row in rows if row.assignee_membership_id is None}
                assert set(seen) <= agent_ids | (unassigned & others)
