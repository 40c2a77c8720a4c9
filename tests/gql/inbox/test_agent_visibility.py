"""An Agent sees conversations assigned to them or to nobody, and nothing of the others.

Everywhere: lists, `conversation(id)`, `node(id)`, nested fields, contacts, search,
mutations. What an Agent may not see is NOT_FOUND, exactly like what does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.factories import (
    Actor,
    create_contact,
    create_conversation,
    create_message,
    create_whatsapp_account,
)
from tests.fixtures.inbox import (
    ASSIGN,
    CONTACTS,
    CONVERSATION,
    MARK_READ,
    NODE,
    UPDATE_STATUS,
    Api,
    codes,
    gid,
    node_ids,
    workspace,
)
from weflux.db import Database
from weflux.models import Contact, Conversation, Message, Organization, WhatsAppAccount


@dataclass
class Inbox:
    mine: Conversation
    free: Conversation
    theirs: Conversation
    shared_theirs: Conversation  # the shared contact, on one number: someone else's
    shared_free: Conversation  # the shared contact, on another number: unassigned
    mine_message: Message
    free_message: Message
    theirs_message: Message
    contacts: dict[str, Contact]


@pytest.fixture
async def inbox(
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
) -> Inbox:
    async with workspace(db, org.id) as session:
        second_account = await create_whatsapp_account(session)
        contacts = {
            key: await create_contact(session, name=name)
            for key, name in (
                ("mine", "Mina Mine"),
                ("free", "Fred Free"),
                ("theirs", "Theo Theirs"),
                ("shared", "Shay Shared"),
                ("lonely", "Lona Lonely"),
            )
        }
        me, them = agent.membership.id, other_agent.membership.id
        mine = await create_conversation(
            session, contact=contacts["mine"], account=account, assignee_membership_id=me
        )
        free = await create_conversation(session, contact=contacts["free"], account=account)
        theirs = await create_conversation(
            session, contact=contacts["theirs"], account=account, assignee_membership_id=them
        )
        shared_theirs = await create_conversation(
            session, contact=contacts["shared"], account=account, assignee_membership_id=them
        )
        shared_free = await create_conversation(
            session, contact=contacts["shared"], account=second_account
        )
        messages = {}
        for key, conversation in (("mine", mine), ("free", free), ("theirs", theirs)):
            messages[key] = await create_message(session, conversation, text=f"hello {key}")
        await create_message(session, shared_theirs, text="secret of theirs")
    return Inbox(
        mine=mine,
        free=free,
        theirs=theirs,
        shared_theirs=shared_theirs,
        shared_free=shared_free,
        mine_message=messages["mine"],
        free_message=messages["free"],
        theirs_message=messages["theirs"],
        contacts=contacts,
    )


def conversation_ids(*rows: Conversation) -> set[str]:
    return {gid("Conversation", row.id) for row in rows}


def contact_ids(inbox: Inbox, *keys: str) -> set[str]:
    return {gid("Contact", inbox.contacts[key].id) for key in keys}


async def test_lists_show_an_agent_their_own_and_unassigned_conversations_only(
    api: Api, inbox: Inbox, agent: Actor, manager: Actor
) -> None:
    assert set(await api.all_conversation_ids(agent)) == conversation_ids(
        inbox.mine, inbox.free, inbox.shared_free
    )
    assert set(await api.all_conversation_ids(agent, assignee="UNASSIGNED")) == conversation_ids(
        inbox.free, inbox.shared_free
    )
    assert set(await api.all_conversation_ids(agent, search="Theo")) == set()
    assert set(await api.all_conversation_ids(agent, search="Shay")) == conversation_ids(
        inbox.shared_free
    )
    assert set(await api.all_conversation_ids(manager)) == conversation_ids(
        inbox.mine, inbox.free, inbox.theirs, inbox.shared_theirs, inbox.shared_free
    )


async def test_contacts_show_an_agent_those_of_visible_conversations_only(
    api: Api, inbox: Inbox, agent: Actor, manager: Actor
) -> None:
    body = await api(agent, CONTACTS, {"first": 100})
    assert set(node_ids(body, "contacts")) == contact_ids(inbox, "mine", "free", "shared")
    body = await api(agent, CONTACTS, {"search": "theirs"})
    assert node_ids(body, "contacts") == []
    body = await api(agent, CONTACTS, {"search": "lonely"})
    assert node_ids(body, "contacts") == []
    body = await api(manager, CONTACTS, {"first": 100})
    assert set(node_ids(body, "contacts")) == contact_ids(
        inbox, "mine", "free", "theirs", "shared", "lonely"
    )


async def test_someone_elses_conversation_is_not_found_by_id(
    api: Api, inbox: Inbox, agent: Actor, manager: Actor
) -> None:
    theirs = gid("Conversation", inbox.theirs.id)
    body = await api(agent, CONVERSATION, {"id": theirs})
    assert codes(body) == ["NOT_FOUND"]
    assert body["data"] == {"conversation": None}
    assert "Theo" not in str(body)
    for visible in (inbox.mine, inbox.free):
        body = await api(agent, CONVERSATION, {"id": gid("Conversation", visible.id)})
        assert "errors" not in body, body
    body = await api(manager, CONVERSATION, {"id": theirs})
    assert body["data"]["conversation"]["contact"]["name"] == "Theo Theirs"


async def test_node_hides_someone_elses_conversation_message_and_contact(
    api: Api, inbox: Inbox, agent: Actor, manager: Actor
) -> None:
    hidden = [
        gid("Conversation", inbox.theirs.id),
        gid("Message", inbox.theirs_message.id),
        gid("Contact", inbox.contacts["theirs"].id),
        gid("Contact", inbox.contacts["lonely"].id),
    ]
    for global_id in hidden:
        body = await api(agent, NODE, {"id": global_id})
        assert codes(body) == ["NOT_FOUND"], global_id
        assert body["data"] == {"node": None}
        # and the manager reaches each of them
        assert (await api(manager, NODE, {"id": global_id}))["data"]["node"]["id"] == global_id
    visible = [
        gid("Conversation", inbox.mine.id),
        gid("Conversation", inbox.free.id),
        gid("Message", inbox.mine_message.id),
        gid("Message", inbox.free_message.id),
        gid("Contact", inbox.contacts["shared"].id),
    ]
    for global_id in visible:
        body = await api(agent, NODE, {"id": global_id})
        assert body["data"]["node"]["id"] == global_id, body


async def test_nested_fields_never_lead_an_agent_to_someone_elses_rows(
    api: Api, inbox: Inbox, agent: Actor
) -> None:
    # the shared contact's messages, through every path an agent has
    body = await api(
        agent,
        """query($id: ID!) { node(id: $id) { ... on Message { conversation {
              id contact { id } messages { edges { node { id text } } } } } } }""",
        {"id": gid("Message", inbox.free_message.id)},
    )
    conversation = body["data"]["node"]["conversation"]
    assert conversation["id"] == gid("Conversation", inbox.free.id)
    assert [e["node"]["text"] for e in conversation["messages"]["edges"]] == ["hello free"]

    # 100 + 100 x 99 = 10,000 nodes: the most one operation may ask (WEFLUX_GRAPHQL_MAX_NODES)
    body = await api(
        agent,
        """{ conversations(first: 100) { edges { node { id
              lastMessage { text conversation { id } }
              messages(last: 99) { edges { node { text } } } } } } }""",
    )
    assert "errors" not in body, body
    texts = str(body)
    assert "secret of theirs" not in texts
    assert "hello theirs" not in texts
    shared = next(
        edge["node"]
        for edge in body["data"]["conversations"]["edges"]
        if edge["node"]["id"] == gid("Conversation", inbox.shared_free.id)
    )
    assert shared["lastMessage"] is None
    assert shared["messages"]["edges"] == []


async def test_an_agent_cannot_change_someone_elses_conversation(
    api: Api, inbox: Inbox, agent: Actor
) -> None:
    theirs = gid("Conversation", inbox.theirs.id)
    attempts: list[tuple[str, dict[str, Any]]] = [
        (UPDATE_STATUS, {"input": {"conversationId": theirs, "status": "RESOLVED"}}),
        (MARK_READ, {"id": theirs}),
        (ASSIGN, {"input": {"conversationId": theirs, "assigneeId": None}}),
        (
            ASSIGN,
            {
                "input": {
                    "conversationId": theirs,
                    "assigneeId": gid("Member", agent.membership.id),
                }
            },
        ),
    ]
    for query, variables in attempts:
        body = await api(agent, query, variables)
        assert codes(body) == ["NOT_FOUND"], query


async def test_a_conversation_reassigned_away_vanishes_on_the_next_request(
    api: Api, inbox: Inbox, agent: Actor, other_agent: Actor, manager: Actor
) -> None:
    # given the agent sees their conversation
    mine = gid("Conversation", inbox.mine.id)
    assert mine in await api.all_conversation_ids(agent)

    # when a manager gives it to another agent
    body = await api(
        manager,
        ASSIGN,
        {"input": {"conversationId": mine, "assigneeId": gid("Member", other_agent.membership.id)}},
    )
    assert body["data"]["assignConversation"]["assignee"] == {
        "id": gid("Member", other_agent.membership.id)
    }

    # then it is gone for the first agent, with its message and contact, and there for the other
    assert mine not in await api.all_conversation_ids(agent)
    assert codes(await api(agent, CONVERSATION, {"id": mine})) == ["NOT_FOUND"]
    for global_id in (
        mine,
        gid("Message", inbox.mine_message.id),
        gid("Contact", inbox.contacts["mine"].id),
    ):
        assert codes(await api(agent, NODE, {"id": global_id})) == ["NOT_FOUND"]
    contacts = await api(agent, CONTACTS, {"first": 100})
    assert gid("Contact", inbox.contacts["mine"].id) not in node_ids(contacts, "contacts")
    assert mine in await api.all_conversation_ids(other_agent, assignee="ME")


PAGE_FIELDS = """id contact { id name } assignee { id user { name } }
  lastMessage { id text sentBy { id } conversation { id } } whatsAppAccount { id }"""


async def test_the_prefetched_page_shows_an_agent_what_one_conversation_shows(
    api: Api, inbox: Inbox, agent: Actor
) -> None:
    """Given an Agent's inbox with someone else's conversations (one sharing a contact),
    when they read the page, whose related rows the list prefetches, and each conversation
    by id, whose related rows load one by one, then both answer the same, and nothing of
    someone else's conversations."""
    # when
    page = await api(agent, f"{{ conversations {{ edges {{ node {{ {PAGE_FIELDS} }} }} }} }}")
    one_by_one = [
        (
            await api(
                agent,
                f"query($id: ID!) {{ conversation(id: $id) {{ {PAGE_FIELDS} }} }}",
                {"id": node_id},
            )
        )["data"]["conversation"]
        for node_id in node_ids(page, "conversations")
    ]

    # then
    assert [edge["node"] for edge in page["data"]["conversations"]["edges"]] == one_by_one
    assert {row["id"] for row in one_by_one} == conversation_ids(
        inbox.mine, inbox.free, inbox.shared_free
    )
    assert "secret of theirs" not in str(page)
    assert "hello theirs" not in str(page)
