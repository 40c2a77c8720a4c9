"""The workspace change feed: every insert and visible change takes a higher position."""

from __future__ import annotations

from tests.fixtures.factories import create_conversation, create_message
from tests.fixtures.inbox import workspace
from weflux.db import Database
from weflux.models import MessageStatus, Organization


async def test_inserts_and_visible_changes_take_increasing_positions_in_the_statement(
    dialect: str, db: Database, org: Organization
) -> None:
    """Given a new conversation and message,
    when the message's status changes and then only the delivery worker's bookkeeping,
    then each insert and the status change took a higher position, read back with the row
    (no refresh), and the bookkeeping alone took none."""
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session)
        first = conversation.update_seq
        message = await create_message(session, conversation, touch_conversation=False)
        inserted = message.update_seq
        message.status = MessageStatus.DELIVERED
        session.add(message)
        await session.flush()
        changed = message.update_seq
        message.attempts += 1
        session.add(message)
        await session.flush()
        assert 0 < first < inserted < changed == message.update_seq
