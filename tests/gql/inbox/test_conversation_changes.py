"""Status and read state: changed on visible conversations, announced after commit."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, MARK_READ, UPDATE_STATUS, Api, codes, gid, workspace
from weflux.db import Database
from weflux.models import Conversation, ConversationStatus, Organization, WhatsAppAccount
from weflux.realtime.events import workspace_channel
from weflux.runtime import runtime_of


async def test_status_and_read_state_change_and_are_announced(
    api: Api,
    app: Starlette,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
) -> None:
    # given an unassigned, unread conversation and a listener on the workspace's channel
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session, account=account, unread_count=3)
    heard: list[dict[str, Any]] = []

    async def listen(message: dict[str, Any]) -> None:
        heard.append({k: v for k, v in message.items() if k != "eid"})

    unsubscribe = await runtime_of(app).broker.subscribe(workspace_channel(org.id), listen)
    conversation_id = gid("Conversation", conversation.id)
    try:
        # when an agent resolves it and reads it
        status = await api(
            agent,
            UPDATE_STATUS,
            {"input": {"conversationId": conversation_id, "status": "RESOLVED"}},
        )
        read = await api(agent, MARK_READ, {"id": conversation_id})
        # and repeats both (no change: nothing to announce)
        await api(
            agent,
            UPDATE_STATUS,
            {"input": {"conversationId": conversation_id, "status": "RESOLVED"}},
        )
        await api(agent, MARK_READ, {"id": conversation_id})
    finally:
        await unsubscribe()

    # then both changed and each change was announced once
    assert status["data"]["updateConversationStatus"] == {
        "id": conversation_id,
        "status": "RESOLVED",
    }
    assert read["data"]["markConversationRead"] == {"id": conversation_id, "unreadCount": 0}
    event = {"event": "conversationUpdated", "id": str(conversation.id)}
    assert heard == [event, event]
    async with workspace(db, org.id) as session:
        stored = await session.get(Conversation, conversation.id)
        assert stored is not None
        assert (stored.status, stored.unread_count) == (ConversationStatus.RESOLVED, 0)


async def test_a_refused_change_is_not_announced(
    api: Api,
    app: Starlette,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
) -> None:
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session, account=account)
    heard: list[dict[str, Any]] = []

    async def listen(message: dict[str, Any]) -> None:
        heard.append({k: v for k, v in message.items() if k != "eid"})

    unsubscribe = await runtime_of(app).broker.subscribe(workspace_channel(org.id), listen)
    try:
        body = await api(
            agent,
            ASSIGN,
            {
                "input": {
                    "conversationId": gid("Conversation", conversation.id),
                    "assigneeId": gid("Member", other_agent.membership.id),
                }
            },
        )
    finally:
        await unsubscribe()
    assert codes(body) == ["FORBIDDEN"]
    assert heard == []
