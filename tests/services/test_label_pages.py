"""A label's inbox pages read a page, not the label: alone and with the status and assignee
filters, for an Admin, a Manager and an Agent, first and after a cursor (EXPLAIN
(ANALYZE) on PostgreSQL as the app's role, row-level security on: rows read); the pages
together are exactly the labelled conversations each may see, in the list's order, on
both engines; each shape's statement is built once."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor, create_actor
from tests.fixtures.plans import (
    InboxWorkspace,
    analyze,
    explained,
    inbox_workspace,
    plan_nodes,
    rows_read,
)
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import restrict_to_agent
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    ConversationLabel,
    ConversationStatus,
    Role,
    utcnow,
)
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


@contextlib.asynccontextmanager
async def _session_of(db: Database, ws: InboxWorkspace, actor: Actor) -> AsyncIterator[Any]:
    """A session of `ws` as `actor` (an Agent's restriction in their session)."""
    async with db.session(ws.org_id) as session:
        if actor.membership.role == Role.AGENT:
            restrict_to_agent(session, actor.membership.id)
        yield session


async def _list(
    session: Any,
    ws: InboxWorkspace,
    actor: Actor,
    shape: Shape,
    *,
    first: int = PAGE,
    after: str | None = None,
) -> Page[Conversation]:
    return await list_conversations(
        session,
        principal_of(actor),
        first=first,
        after=after,
        status=shape.status,
        assignee=shape.assignee,
        label=getattr(ws, shape.label),
    )


async def _page(
    db: Database,
    ws: InboxWorkspace,
    actor: Actor,
    shape: Shape,
    *,
    first: int = PAGE,
    after: str | None = None,
) -> Page[Conversation]:
    """One page as `actor`."""
    async with _session_of(db, ws, actor) as session:
        return await _list(session, ws, actor, shape, first=first, after=after)


async def _third_page_cursor(
    db: Database, ws: InboxWorkspace, actor: Actor, shape: Shape
) -> str | None:
    """The cursor a client reads the third page of `shape` after (None: fewer pages)."""
    cursor = None
    for _ in range(2):
        page = await _page(db, ws, actor, shape, after=cursor)
        cursor = page.items[-1][1] if page.has_next_page else None
        if cursor is None:
            break
    return cursor


@pytest.fixture
async def big_inbox(db: Database, owner_db: Database) -> tuple[InboxWorkspace, Actor]:
    """10,000 conversations (tests.fixtures.plans.inbox_workspace: one in ten labelled
    `label`, one in two `half_label`) with statistics, and a Manager of the workspace."""
    ws = await inbox_workspace(db, CONVERSATIONS)
    async with db.session(ws.org_id) as session:
        manager = await create_actor(session, Role.MANAGER)
    async with owner_db.engine.connect() as connection:
        await analyze(connection, "conversation_labels")
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
        cursor = await _third_page_cursor(db, ws, actor, shape)
        # Only the Agent has conversations of their own.
        assert cursor is not None or (shape.assignee == AssigneeFilter.ME and actor is not ws.agent)
        for after in (None, cursor) if cursor else (None,):
            async with _session_of(db, ws, actor) as session:
                with explained(db, analyze=True) as plans:
                    await _list(session, ws, actor, shape, after=after)
            where = f"{role} {shape} {'after a cursor' if after else 'first page'}"
            shown = "\n".join(line for plan in plans for line in plan)
            for table in ("conversations", "conversation_labels"):
                read = sum(rows_read(plan, table) for plan in plans)
                assert read <= BOUND, f"{where}: {read} rows of {table}\n{shown}"


# The indexes of a label's labellings in the list's order (migrations 0030, 0032): alone,
# after the status, the assignee, both, nobody's with and without a status.
LABELLED_WALKS = {
    "postgresql": {
        "ix_conversation_labels_inbox_order",
        "ix_conversation_labels_inbox_order_status",
        "ix_conversation_labels_inbox_order_assignee",
        "ix_conversation_labels_inbox_order_assignee_status",
        "ix_conversation_labels_inbox_order_unassigned",
        "ix_conversation_labels_inbox_order_unassigned_status",
    },
    "sqlite": {
        f"ix_conversation_labels_org_id_label_id_{columns}last_message_at_conversation_id"
        for columns in ("", "status_", "assignee_membership_id_", "assignee_membership_id_status_")
    },
}
# Reads of conversations by key: each labelling's conversation (the primary key), the
# erased ones the scoping layer hides (few: ix_conversations_erased).
BY_KEY = {"pk_conversations", "ix_conversations_erased", "sqlite_autoindex_conversations_1"}


def _postgresql_reads(plan: list[str], table: str) -> set[tuple[str, str | None]]:
    """A plan of `explained(analyze=True)`: how it reads `table` other than by key (node
    type, index)."""
    return {
        (node["Node Type"], node.get("Index Name"))
        for node in plan_nodes(plan)
        if node.get("Index Name") not in BY_KEY
        and (node.get("Relation Name") == table or node["Node Type"] == "Bitmap Index Scan")
    }


def _postgresql_sorted(plan: list[str]) -> int:
    """The most rows any sort of the plan sorted (its input)."""
    return max(
        (
            sum(child.get("Actual Rows", 0) for child in node["Plans"])
            for node in plan_nodes(plan)
            if node["Node Type"] == "Sort"
        ),
        default=0,
    )


def _sqlite_reads(plan: list[str], table: str) -> tuple[set[tuple[str, str]], list[str]]:
    """A plan of `explained()` on SQLite: how it reads `table` other than by key (index,
    what it seeks), and the sorts of the rows such a read gives."""
    steps = [line.split(":", 2) for line in plan]
    reads: set[tuple[str, str]] = set()
    parents = set()
    for parent, _, detail in steps:
        found = re.match(
            rf"(?:SEARCH|SCAN) {table}\b(?: USING (?:COVERING )?INDEX (\w+))?(.*)", detail
        )
        if found and found.group(1) not in BY_KEY:
            parents.add(parent)
            reads.add((str(found.group(1)), found.group(2).strip()))
    sorts = [
        detail
        for parent, _, detail in steps
        if parent in parents and detail.startswith("USE TEMP B-TREE FOR ORDER BY")
    ]
    return reads, sorts


WALKED_SHAPES = [
    *SHAPES,
    Shape("label", status=ConversationStatus.OPEN),
    Shape("label", assignee=AssigneeFilter.UNASSIGNED),
]


@pytest.fixture(params=[0.01, 0.2], ids=["shares-1pc", "shares-20pc"])
async def shares_inbox(
    db: Database, owner_db: Database, request: pytest.FixtureRequest
) -> InboxWorkspace:
    """10,000 conversations (tests.fixtures.plans.inbox_workspace), the Agent's and
    nobody's share one in a hundred each, or a fifth each, with statistics."""
    ws = await inbox_workspace(db, CONVERSATIONS, share=request.param)
    async with owner_db.engine.connect() as connection:
        await analyze(connection)
        if connection.dialect.name == "postgresql":
            await connection.exec_driver_sql("ANALYZE conversation_labels")
    return ws


async def test_each_labelled_page_walks_its_labellings_whatever_the_shares(
    db: Database, shares_inbox: InboxWorkspace
) -> None:
    """Given 10,000 conversations, the Agent's and nobody's share one in a hundred each (or
    a fifth each), 20 % OPEN, a label on half of them and one on a tenth,
    when the Admin and the Agent read the first and the third page of 20 of a label,
    alone and with each status and assignee filter,
    then each part of the page walks one range of an index of the label's labellings in
    the list's order (its status, its assignee, both: their copies, migration 0032) from
    the cursor, and reads each labelling's conversation by key: no conversation read
    otherwise, nothing sorted but the parts' pages merged, about a page of labellings
    read (PostgreSQL: an index scan; SQLite: a search of the label and the filters).

    Before, a page with an assignee or an Agent's walked the conversations' indexes and
    probed each row's labelling; PostgreSQL, misestimating each arm of the Agent's
    restriction (its share counted twice), read and sorted every conversation of a part
    with the status where the share was small, or the label's on a tenth."""
    ws = shares_inbox
    engine = db.engine.dialect.name
    cases = [(actor, shape) for actor in (ws.admin, ws.agent) for shape in WALKED_SHAPES]
    # The cursors of each case's third page, read as the app reads them.
    pages = [
        (actor, shape, await _third_page_cursor(db, ws, actor, shape)) for actor, shape in cases
    ]
    for actor, shape, cursor in pages:
        for after in (None, cursor) if cursor else (None,):
            async with _session_of(db, ws, actor) as session:
                with explained(db, analyze=engine == "postgresql") as plans:
                    await _list(session, ws, actor, shape, after=after)
            where = f"{actor.membership.role} {shape} {'after a cursor' if after else 'first'}"
            shown = "\n".join(line for plan in plans for line in plan)
            assert plans, where
            for plan in plans:
                if engine == "postgresql":
                    assert _postgresql_reads(plan, "conversations") == set(), f"{where}\n{shown}"
                    walks = _postgresql_reads(plan, "conversation_labels")
                    assert {kind for kind, _ in walks} <= {"Index Scan", "Index Only Scan"}, (
                        f"{where}\n{shown}"
                    )
                    assert {index for _, index in walks} <= LABELLED_WALKS[engine], where
                    # Two parts of a page and a cursor's row each, merged.
                    assert _postgresql_sorted(plan) <= 2 * (PAGE + 1), f"{where}\n{shown}"
                else:
                    others, _ = _sqlite_reads(plan, "conversations")
                    assert others == set(), f"{where}\n{shown}"
                    searches, sorts = _sqlite_reads(plan, "conversation_labels")
                    assert sorts == [], f"{where}: sorts\n{shown}"
                    assert {index for index, _ in searches} <= LABELLED_WALKS[engine], (
                        f"{where}\n{shown}"
                    )
                    assert all("label_id=?" in sought for _, sought in searches), (
                        f"{where}\n{shown}"
                    )
            if engine == "postgresql":
                read = sum(rows_read(plan, "conversation_labels") for plan in plans)
                assert read <= 3 * (PAGE + 1), f"{where}: {read} labellings\n{shown}"


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


async def test_a_labelled_search_lists_the_visible_labelled_matches_in_order(
    db: Database,
) -> None:
    """Given 600 conversations labelled one in two, of contacts "Contact <n>",
    when the Admin and the Agent search a label's conversations for "Contact 1"
    (PostgreSQL: its candidates, joined) and "17" (too short for a trigram: each
    labelling's conversation tested), alone and with ME and UNASSIGNED, paging by 7,
    then the pages are exactly the visible labelled matches, in the list's order."""
    ws = await inbox_workspace(db, 600)
    async with db.session(ws.org_id) as session:
        rows = list((await session.exec(select(Conversation))).all())
        names = {
            contact.id: (contact.name, contact.profile_name, contact.phone_number, contact.wa_id)
            for contact in (await session.exec(select(Contact))).all()
        }
        labelled = set(
            (
                await session.exec(
                    select(ConversationLabel.conversation_id).where(
                        col(ConversationLabel.label_id) == ws.half_label
                    )
                )
            ).all()
        )
    for actor in (ws.admin, ws.agent):
        for term in ("Contact 1", "17"):
            for assignee in AssigneeFilter:
                shape = Shape("half_label", assignee=assignee)
                matching = {
                    row.id
                    for row in rows
                    if any(term.lower() in (field or "").lower() for field in names[row.contact_id])
                }
                wanted = [
                    conversation
                    for conversation in _wanted(rows, labelled, actor, shape, actor is ws.agent)
                    if conversation in matching
                ]
                seen: list[uuid.UUID] = []
                cursor: str | None = None
                while True:
                    async with db.session(ws.org_id) as session:
                        if actor is ws.agent:
                            restrict_to_agent(session, ws.agent.membership.id)
                        page = await list_conversations(
                            session,
                            principal_of(actor),
                            first=7,
                            after=cursor,
                            assignee=assignee,
                            search=term,
                            label=ws.half_label,
                        )
                    seen += [row.id for row, _ in page.items]
                    if not page.has_next_page:
                        break
                    cursor = page.items[-1][1]
                assert seen == wanted, f"{actor.membership.role} {term} {assignee}"
