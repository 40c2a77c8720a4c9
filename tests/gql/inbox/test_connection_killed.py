"""A mutation whose PostgreSQL connection is killed mid-transaction: UPSTREAM_UNAVAILABLE
(a dependency's outage, nothing of the driver's error), nothing half-written, and the
retry is served."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from tests.fixtures.databases import DatabaseUrls, killed_while_waiting, postgres_only
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, Api, gid
from weflux.db import Database
from weflux.db_errors import MESSAGE
from weflux.models import Conversation, Message, Organization, utcnow

pytestmark = postgres_only

SEND = """mutation($input: SendMessageInput!) {
  sendMessage(input: $input) { id text status } }"""
UNAVAILABLE = {"message": MESSAGE, "code": "UPSTREAM_UNAVAILABLE"}


def _shown(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"message": error["message"], "code": error["extensions"]["code"]}
        for error in body["errors"]
    ]


async def test_a_send_whose_connection_is_killed_mid_transaction_writes_nothing(
    api: Api,
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    org: Organization,
    admin: Actor,
) -> None:
    """Given a reply whose transaction waits on its conversation's row (locked by another
    writer), when its backend is killed, then the answer is UPSTREAM_UNAVAILABLE
    (no SQL, no driver text), no message is stored, and the retry is queued."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session, last_inbound_at=utcnow())
    variables = {"input": {"conversationId": gid("Conversation", conversation.id), "text": "hi"}}
    await api.token(admin)

    body = await killed_while_waiting(
        database_urls,
        owner_db,
        "SELECT 1 FROM conversations WHERE id = :id FOR UPDATE",
        lambda: api(admin, SEND, variables),
        {"id": conversation.id},
    )

    assert _shown(body) == [UNAVAILABLE]
    async with db.session(org.id) as session:
        assert list(await session.exec(select(Message.id))) == []
    again = await api(admin, SEND, variables)
    assert again["data"]["sendMessage"]["status"] == "QUEUED"


async def test_an_assignment_whose_connection_is_killed_mid_transaction_changes_nothing(
    api: Api,
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    org: Organization,
    admin: Actor,
    agent: Actor,
) -> None:
    """Given an assignment waiting on its conversation's row, when its backend is killed,
    then the answer is UPSTREAM_UNAVAILABLE, the conversation stays unassigned,
    and the retry assigns it."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session, last_inbound_at=utcnow())
    variables = {
        "input": {
            "conversationId": gid("Conversation", conversation.id),
            "assigneeId": gid("Member", agent.membership.id),
        }
    }
    await api.token(admin)

    body = await killed_while_waiting(
        database_urls,
        owner_db,
        "SELECT 1 FROM conversations WHERE id = :id FOR UPDATE",
        lambda: api(admin, ASSIGN, variables),
        {"id": conversation.id},
    )

    assert _shown(body) == [UNAVAILABLE]
    async with db.session(org.id) as session:
        assignee = await session.exec(
            select(Conversation.assignee_membership_id).where(
                col(Conversation.id) == conversation.id
            )
        )
        assert list(assignee) == [None]
    again = await api(admin, ASSIGN, variables)
    assert again["data"]["assignConversation"]["assignee"]["id"] == variables["input"]["assigneeId"]
