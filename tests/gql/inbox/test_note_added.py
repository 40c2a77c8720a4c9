"""`noteAdded` live over a real socket, with the in-process broker and with Redis.

Each subscriber loads a note through its own scope: an Agent never receives a note of a
conversation assigned to someone else; `conversationId` narrows to one conversation.
"""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import gid, workspace
from tests.fixtures.live import until_listening
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount

NOTE_ADDED = """subscription($conversationId: ID) { noteAdded(conversationId: $conversationId) {
  id text author { id } } }"""
ADD_NOTE = """mutation($input: AddNoteInput!) { addNote(input: $input) { id } }"""


async def test_note_added_reaches_those_who_see_the_conversation_only(
    broker_app: Starlette,
    served: httpx.AsyncClient,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
    other_agent: Actor,
) -> None:
    async with workspace(db, org.id) as session:
        theirs = await create_conversation(
            session, account=account, assignee_membership_id=other_agent.membership.id
        )
        free = await create_conversation(session, account=account)
    theirs_id, free_id = gid("Conversation", theirs.id), gid("Conversation", free.id)
    base = str(served.base_url)
    admin_token = await token_for(served, admin)
    admin_socket = await GraphQLSocket.connect(base, admin_token)
    agent_socket = await GraphQLSocket.connect(base, await token_for(served, agent))
    everything = await admin_socket.subscribe(NOTE_ADDED)
    only_free = await admin_socket.subscribe(NOTE_ADDED, {"conversationId": free_id})
    agents = await agent_socket.subscribe(NOTE_ADDED)
    await until_listening(broker_app, 3)

    async def add(conversation_id: str, text: str) -> str:
        response = await gql(
            served,
            admin_token,
            ADD_NOTE,
            {"input": {"conversationId": conversation_id, "text": text}},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        return str(body["data"]["addNote"]["id"])

    hidden = await add(theirs_id, "about someone else's customer")
    shown = await add(free_id, "about a free one")

    def note(frame: dict[str, object]) -> object:
        assert frame["type"] == "next", frame
        return frame["payload"]["data"]["noteAdded"]  # type: ignore[index]

    assert note(await admin_socket.next(everything)) == {
        "id": hidden,
        "text": "about someone else's customer",
        "author": {"id": gid("Member", admin.membership.id)},
    }
    assert note(await admin_socket.next(everything))["id"] == shown  # type: ignore[index]
    assert note(await admin_socket.next(only_free))["id"] == shown  # type: ignore[index]
    # the first note the Agent receives is the later one: the hidden one never came
    assert note(await agent_socket.next(agents))["id"] == shown  # type: ignore[index]
    # and a later note of a conversation given to them arrives: the stream goes on
    last = await add(free_id, "still free")
    assert note(await agent_socket.next(agents))["id"] == last  # type: ignore[index]
    await admin_socket.close()
    await agent_socket.close()
