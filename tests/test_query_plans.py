"""The plan tests' helper (`tests.fixtures.plans.explained`): an explained SELECT answers
no rows in its own columns, whether SQLAlchemy compiled it before or not, and leaves
nothing of its plan's columns to the runs after the block."""

from __future__ import annotations

from sqlmodel import col, select

from tests.fixtures.factories import create_conversation
from tests.fixtures.plans import explained
from weflux.db import Database
from weflux.models import Conversation, Organization


async def test_an_explained_select_answers_no_rows_and_leaves_its_columns_alone(
    db: Database, org: Organization
) -> None:
    """Given a conversation, and a statement for it never run before in this engine,
    when it is run first inside `explained`, then after it, then inside it again,
    then inside it answers no rows (not a plan's columns for the ORM: PostgreSQL's
    NoSuchColumnError) and gives one plan each time, and after it the conversation
    itself (SQLAlchemy keeps a compiled statement's result columns from its first run:
    SQLite's plan's columns read another of the row's ids)."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session)
    statement = select(Conversation).where(col(Conversation.id) == conversation.id)
    for run in ("first", "after", "again"):
        async with db.session(org.id) as session:
            await session.connection()  # its BEGIN is not explained
            if run == "after":
                rows = (await session.exec(statement)).all()
                assert [(row.id, row.contact_id, row.account_id) for row in rows] == [
                    (conversation.id, conversation.contact_id, conversation.account_id)
                ]
                continue
            with explained(db) as plans:
                rows = (await session.exec(statement)).all()
        assert rows == [], run
        assert len(plans) == 1, run
        assert plans[0], run
