"""The inbox list reads a page, not the workspace: each page of `conversations`, for an
Admin and for an Agent, first and after a cursor, with the inbox's status and assignee
filters, walks indexes in the list's order from its cursor (EXPLAIN (ANALYZE) on
PostgreSQL: rows read; EXPLAIN QUERY PLAN on SQLite: what each step seeks), the pages
together are exactly the visible conversations in the list's order, and each shape's
statement is built once, its values bound."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.factories import Actor
from tests.fixtures.plans import (
    analyze,
    explained,
    inbox_workspace,
    prefer_indexes,
    rows_read,
)
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import ScopedSession, restrict_to_agent
from weflux.db import Database
from weflux.models import Conversation, ConversationStatus, Role, utcnow
from weflux.pagination import Page
from weflux.services.conversations import AssigneeFilter, list_conversations

PAGE = 20
CONVERSATIONS = 10_000
# Rows a page may read on PostgreSQL: up to four parts of PAGE + 1 rows, a status filter
# passing one row in five of an assignee's, a part's few undated ones. Before the
# indexes in the list's order, every visible conversation was read and sorted (an
# Agent's own 500, nobody's 500; an Admin's 10,000).
BOUND = 300


@dataclass(frozen=True)
class Shape:
    status: ConversationStatus | None = None
    assignee: AssigneeFilter = AssigneeFilter.ANY

    def __str__(self) -> str:
        return f"{self.status and self.status.value}+{self.assignee.value}"


SHAPES = [
    Shape(),
    Shape(status=ConversationStatus.OPEN),
    Shape(assignee=AssigneeFilter.ME),
    Shape(assignee=AssigneeFilter.UNASSIGNED),
    Shape(status=ConversationStatus.OPEN, assignee=AssigneeFilter.ME),
    Shape(status=ConversationStatus.OPEN, assignee=AssigneeFilter.UNASSIGNED),
]


async def _list(
    session: AsyncSession, actor: Actor, shape: Shape, *, first: int, after: str | None
) -> Page[Conversation]:
    return await list_conversations(
        session,
        principal_of(actor),
        first=first,
        after=after,
        status=shape.status,
        assignee=shape.assignee,
    )


async def _page(
    db: Database,
    org_id: object,
    actor: Actor,
    shape: Shape,
    *,
    first: int = PAGE,
    after: str | None = None,
) -> tuple[list[Conversation], str | None]:
    """One page as `actor` (the Agent's restriction in their session): rows, end cursor."""
    async with db.session(org_id) as session:  # type: ignore[arg-type]
        if actor.membership.role == Role.AGENT:
            restrict_to_agent(session, actor.membership.id)
        page = await _list(session, actor, shape, first=first, after=after)
    cursor = page.items[-1][1] if page.has_next_page else None
    return [row for row, _ in page.items], cursor


def _sqlite_problems(plan: list[str], shape: Shape, agent: bool, after: bool) -> list[str]:
    """The steps on conversations that seek none of the columns the page filters on (an
    Agent's parts: the assignee) or not the cursor's position, and sorts of the rows
    such a step reads (rather than of a part's page)."""
    steps = [line.split(":", 2) for line in plan]
    on_conversations = [
        (parent, detail)
        for parent, _, detail in steps
        if re.match(r"(SEARCH|SCAN) conversations\b", detail)
    ]
    parents = {parent for parent, _ in on_conversations}
    problems = [
        detail
        for parent, _, detail in steps
        if parent in parents and detail.startswith("USE TEMP B-TREE FOR ORDER BY")
    ]
    filtered = set()
    if agent or shape.assignee != AssigneeFilter.ANY:
        filtered.add("assignee_membership_id=?")
    if shape.status is not None:
        filtered.add("status=?")
    for _, detail in on_conversations:
        sought = re.search(r"\((.*)\)$", detail)
        constraint = sought.group(1) if sought else ""
        # With two filters SQLite (no statistics) may seek either: both are equalities.
        seeks_a_filter = not filtered or any(column in constraint for column in filtered)
        seeks_the_cursor = not after or re.search(
            r"\(last_message_at,id\)<|last_message_at=\?", constraint
        )
        if not (seeks_a_filter and seeks_the_cursor):
            problems.append(detail)
    return problems


@pytest.fixture
async def big_inbox(db: Database, owner_db: Database) -> tuple[object, Actor, Actor]:
    """A workspace of 10,000 conversations (tests.fixtures.plans.inbox_workspace), with
    statistics; its id, its Admin and the Agent."""
    workspace = await inbox_workspace(db, CONVERSATIONS)
    async with owner_db.engine.connect() as connection:
        await analyze(connection)
    return workspace.org_id, workspace.admin, workspace.agent


@pytest.mark.parametrize("role", ["admin", "agent"])
async def test_each_inbox_page_reads_about_a_page(
    db: Database, big_inbox: tuple[object, Actor, Actor], role: str
) -> None:
    """Given 10,000 conversations, 5 % the Agent's, 5 % nobody's, 1 % without a message,
    when the Admin or the Agent reads the first page of 20 and the third (by the cursor)
    of each status and assignee filter,
    then PostgreSQL reads at most a few pages' rows of conversations for each (no read
    and sort of every visible one), and SQLite seeks each step on the filter's columns
    and the cursor (no walk of the workspace's index from its start)."""
    org_id, admin, agent = big_inbox
    actor = agent if role == "agent" else admin
    sqlite = db.engine.dialect.name == "sqlite"
    for shape in SHAPES:
        _, cursor = await _page(db, org_id, actor, shape)
        if cursor is not None:
            _, cursor = await _page(db, org_id, actor, shape, after=cursor)
        # The Admin has no conversation of their own: a first page only (empty).
        assert cursor is not None or (shape.assignee == AssigneeFilter.ME and actor is admin)
        for after in (None, cursor) if cursor else (None,):
            async with db.session(org_id) as session:  # type: ignore[arg-type]
                if actor is agent:
                    restrict_to_agent(session, agent.membership.id)
                await prefer_indexes(await session.connection())
                with explained(db, analyze=True) as plans:
                    await _list(session, actor, shape, first=PAGE, after=after)
            # After a cursor, the undated conversations' statement follows when the first
            # answers less than a page (an explained statement answers none).
            assert len(plans) == (2 if after else 1)
            where = f"{role} {shape} {'after a cursor' if after else 'first page'}"
            shown = "\n".join(line for plan in plans for line in plan)
            if sqlite:
                problems = [
                    problem
                    for plan in plans
                    for problem in _sqlite_problems(plan, shape, actor is agent, bool(after))
                ]
                assert problems == [], f"{where}:\n{shown}"
            else:
                read = sum(rows_read(plan, "conversations") for plan in plans)
                assert read <= BOUND, f"{where}: {read} rows\n{shown}"


async def test_the_pages_are_the_visible_conversations_in_order(
    db: Database, owner_db: Database
) -> None:
    """Given 600 conversations (some sharing a last activity, some without one, a few
    erased),
    when the Admin and the Agent page through each filter by 7,
    then the pages together are exactly the conversations each may see, once each, in
    the list's order (last activity first, undated last, then id, both descending)."""
    workspace = await inbox_workspace(db, 600)
    tie = utcnow().replace(microsecond=0)
    async with db.session(workspace.org_id) as session:
        ids = sorted((await session.exec(select(col(Conversation.id)))).all())
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id).in_(ids[::9]))
            .values(last_message_at=tie)
        )
        rows = (await session.exec(select(Conversation))).all()
    floor = datetime.min.replace(tzinfo=tie.tzinfo)
    for actor in (workspace.admin, workspace.agent):
        me = actor.membership.id
        for shape in SHAPES:
            wanted = [
                row.id
                for row in sorted(
                    rows,
                    key=lambda r: (r.last_message_at is not None, r.last_message_at or floor, r.id),
                    reverse=True,
                )
                if (actor is workspace.admin or row.assignee_membership_id in (me, None))
                and (shape.status is None or row.status == shape.status)
                and (
                    shape.assignee == AssigneeFilter.ANY
                    or row.assignee_membership_id
                    == (me if shape.assignee == AssigneeFilter.ME else None)
                )
            ]
            seen: list[object] = []
            cursor: str | None = None
            while True:
                page, cursor = await _page(
                    db, workspace.org_id, actor, shape, first=7, after=cursor
                )
                seen += [row.id for row in page]
                if cursor is None:
                    break
            assert seen == wanted, f"{actor.membership.role} {shape}"


@contextlib.contextmanager
def statements_given() -> Iterator[list[object]]:
    """The statement objects the ORM is given inside, as the caller built them (before
    the scoping layer's listener adds its criteria to a copy)."""
    given: list[object] = []

    def record(state: ORMExecuteState) -> None:
        given.append(state.statement)

    event.listen(ScopedSession, "do_orm_execute", record, insert=True)
    try:
        yield given
    finally:
        event.remove(ScopedSession, "do_orm_execute", record)


async def test_each_shape_runs_a_statement_built_once(db: Database) -> None:
    """Given 600 conversations,
    when the Admin and the Agent read each filter's first page at two sizes and its
    second and third pages,
    then each shape is the same statement object every time, the page size, the cursor
    and the Agent bound values: no statement is built per request (an Agent's merged
    statement, built per request, cost about 2 ms of Python a page), and SQLAlchemy
    compiles each shape once."""
    workspace = await inbox_workspace(db, 600)

    async def given(actor: Actor, shape: Shape, first: int, after: str | None) -> list[object]:
        with statements_given() as statements:
            await _page(db, workspace.org_id, actor, shape, first=first, after=after)
        return statements

    for actor in (workspace.admin, workspace.agent):
        for shape in SHAPES:
            where = f"{actor.membership.role} {shape}"
            first_pages = [await given(actor, shape, first, None) for first in (7, 2)]
            assert len(first_pages[0]) == len(first_pages[1]) == 1, where
            assert first_pages[0][0] is first_pages[1][0], where
            _, second = await _page(db, workspace.org_id, actor, shape, first=2)
            if second is None:  # the Admin has no conversation of their own
                assert actor is workspace.admin, where
                assert shape.assignee == AssigneeFilter.ME, where
                continue
            _, third = await _page(db, workspace.org_id, actor, shape, first=2, after=second)
            assert third is not None, where
            # The dated rest first (a second statement reads undated ones where it ends).
            later_pages = [await given(actor, shape, 2, after) for after in (second, third)]
            assert later_pages[0][0] is later_pages[1][0], where
