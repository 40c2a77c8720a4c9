"""Another workspace's inbox does not exist: every id it holds is NOT_FOUND, in every role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.factories import Actor, create_contact, create_conversation, create_message
from tests.fixtures.inbox import (
    ASSIGN,
    CONTACTS,
    CONVERSATION,
    MARK_READ,
    MESSAGES,
    NODE,
    UPDATE_STATUS,
    Api,
    codes,
    gid,
    node_ids,
    workspace,
)
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount

UPDATE_CONTACT = """
mutation($input: UpdateContactInput!) { updateContact(input: $input) { id name } }"""


@dataclass
class Theirs:
    conversation: str
    message: str
    contact: str


@pytest.fixture
async def theirs(db: Database, other_org: Organization, other_account: WhatsAppAccount) -> Theirs:
    """Globex's unassigned conversation, its message and contact."""
    async with workspace(db, other_org.id) as session:
        contact = await create_contact(session, name="Globex Customer")
        conversation = await create_conversation(session, contact=contact, account=other_account)
        message = await create_message(session, conversation, text="globex only")
    return Theirs(
        conversation=gid("Conversation", conversation.id),
        message=gid("Message", message.id),
        contact=gid("Contact", contact.id),
    )


async def test_lists_never_show_another_workspace(
    api: Api, theirs: Theirs, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    for actor in (admin, agent):
        assert await api.all_conversation_ids(actor) == []
        assert await api.all_conversation_ids(actor, search="Globex") == []
        assert node_ids(await api(actor, CONTACTS, {"first": 100}), "contacts") == []
    assert await api.all_conversation_ids(other_admin) == [theirs.conversation]


async def test_every_id_taking_field_answers_not_found(
    api: Api, theirs: Theirs, admin: Actor, agent: Actor
) -> None:
    attempts: list[tuple[str, dict[str, Any]]] = [
        (CONVERSATION, {"id": theirs.conversation}),
        (MESSAGES, {"id": theirs.conversation}),
        (NODE, {"id": theirs.conversation}),
        (NODE, {"id": theirs.message}),
        (NODE, {"id": theirs.contact}),
        (UPDATE_STATUS, {"input": {"conversationId": theirs.conversation, "status": "PENDING"}}),
        (MARK_READ, {"id": theirs.conversation}),
        (ASSIGN, {"input": {"conversationId": theirs.conversation, "assigneeId": None}}),
        (UPDATE_CONTACT, {"input": {"id": theirs.contact, "name": "Renamed"}}),
    ]
    for query, variables in attempts:
        body = await api(admin, query, variables)
        assert codes(body) == ["NOT_FOUND"], (query, variables)
        assert "Globex Customer" not in str(body)
        assert "globex only" not in str(body)
    # an agent's own assignment of it is as unknown (no FORBIDDEN to hint it exists)
    body = await api(
        agent,
        ASSIGN,
        {
            "input": {
                "conversationId": theirs.conversation,
                "assigneeId": gid("Member", agent.membership.id),
            }
        },
    )
    assert codes(body) == ["NOT_FOUND"]


async def test_nothing_of_another_workspace_changed(
    api: Api, theirs: Theirs, admin: Actor, other_admin: Actor
) -> None:
    await api(
        admin,
        UPDATE_STATUS,
        {"input": {"conversationId": theirs.conversation, "status": "RESOLVED"}},
    )
    await api(admin, UPDATE_CONTACT, {"input": {"id": theirs.contact, "name": "Renamed"}})
    body = await api(other_admin, CONVERSATION, {"id": theirs.conversation})
    assert body["data"]["conversation"]["status"] == "OPEN"
    assert body["data"]["conversation"]["contact"]["name"] == "Globex Customer"
