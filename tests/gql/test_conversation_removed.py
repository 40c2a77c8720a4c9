"""`conversationRemoved`: a conversation leaving the subscriber's view (reassigned away from
an Agent, erased, the subscriber's role narrowed to AGENT), and nobody else's."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, Api, gid, workspace
from tests.fixtures.live import until_listening
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.models import Conversation, Organization

REMOVED = "subscription { conversationRemoved }"
ERASE = "mutation($id: ID!) { eraseContact(contactId: $id) { id } }"
UPDATE_ROLE = """mutation($input: UpdateMemberRoleInput!) {
  updateMemberRole(input: $input) { id role } }"""
VIEWER_ROLE = "query { viewer { role } }"


async def _conversation(db: Database, org_id: uuid.UUID, assignee: Actor | None) -> Conversation:
    async with workspace(db, org_id) as session:
        return await create_conversation(
            session,
            org_id=org_id,
            assignee_membership_id=assignee.membership.id if assignee else None,
        )


async def _removed(socket: GraphQLSocket, operation: str) -> str:
    frame = await socket.next(operation, timeout=10)
    assert frame["type"] == "next", frame
    assert "errors" not in frame["payload"], frame
    return str(frame["payload"]["data"]["conversationRemoved"])


async def _subscribed(
    live: str, http: httpx.AsyncClient, actors: list[Actor]
) -> list[tuple[GraphQLSocket, str]]:
    subscribed = []
    for actor in actors:
        socket = await GraphQLSocket.connect(live, await token_for(http, actor))
        subscribed.append((socket, await socket.subscribe(REMOVED)))
    return subscribed


async def _assign(api: Api, admin: Actor, conversation: Conversation, to: Actor | None) -> None:
    body = await api(
        admin,
        ASSIGN,
        {
            "input": {
                "conversationId": gid("Conversation", conversation.id),
                "assigneeId": gid("Member", to.membership.id) if to else None,
            }
        },
    )
    assert "errors" not in body, body


async def test_reassignment_and_erasure_reach_exactly_those_who_lose_the_conversation(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given Agents, a Manager and another workspace's Admin subscribed to removals,
    when an unassigned conversation and one of the first Agent's are assigned to the second
    Agent, then one is handed back, then a contact is erased,
    then each removal reaches only who could see the conversation before and not after
    (an Agent: theirs or unassigned ones; a Manager: erasure only), with its global id,
    and the other workspace receives only its own."""
    unassigned = await _conversation(db, org.id, None)
    agents = await _conversation(db, org.id, agent)
    elsewhere = await _conversation(db, other_org.id, None)
    api = Api(http)
    (a, a_op), (b, b_op), (m, m_op), (o, o_op) = await _subscribed(
        live, http, [agent, other_agent, manager, other_admin]
    )
    await until_listening(live_app, 4)

    await _assign(api, admin, unassigned, other_agent)
    assert await _removed(a, a_op) == gid("Conversation", unassigned.id)
    await _assign(api, admin, agents, other_agent)
    assert await _removed(a, a_op) == gid("Conversation", agents.id)
    await _assign(api, admin, unassigned, agent)  # back from the second Agent
    # The second Agent's first removal: it gained both before and lost nothing.
    assert await _removed(b, b_op) == gid("Conversation", unassigned.id)

    erased = await api(admin, ERASE, {"id": gid("Contact", agents.contact_id)})
    assert "errors" not in erased, erased
    assert await _removed(b, b_op) == gid("Conversation", agents.id)
    # The Manager's first removal is the erasure: reassignments hide nothing from them.
    assert await _removed(m, m_op) == gid("Conversation", agents.id)

    theirs = await api(other_admin, ERASE, {"id": gid("Contact", elsewhere.contact_id)})
    assert "errors" not in theirs, theirs
    assert await _removed(o, o_op) == gid("Conversation", elsewhere.id)
    for socket in (a, b, m, o):
        await socket.close()


async def _role_seen(socket: GraphQLSocket, role: str) -> None:
    """Wait until the socket's session acts with `role` (re-checked after the change)."""
    for _ in range(200):
        operation = await socket.subscribe(VIEWER_ROLE)
        frame: dict[str, Any] = await socket.next(operation)
        if frame["payload"]["data"]["viewer"]["role"] == role:
            return
    raise AssertionError(f"the socket never acted as {role}")


async def test_a_manager_narrowed_to_agent_loses_the_conversations_assigned_to_others(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
) -> None:
    """Given a Manager subscribed to removals, a conversation of an Agent's, an unassigned
    one and one of the Manager's own,
    when an Admin makes the Manager an Agent,
    then the Manager receives the Agent's conversation only (unassigned and own ones stay
    visible), and later removals follow the Agent rules."""
    others = await _conversation(db, org.id, agent)
    unassigned = await _conversation(db, org.id, None)
    await _conversation(db, org.id, manager)
    api = Api(http)
    [(socket, operation)] = await _subscribed(live, http, [manager])
    await until_listening(live_app, 1)

    changed = await api(
        admin,
        UPDATE_ROLE,
        {"input": {"memberId": gid("Member", manager.membership.id), "role": "AGENT"}},
    )
    assert "errors" not in changed, changed
    assert await _removed(socket, operation) == gid("Conversation", others.id)
    await _role_seen(socket, "AGENT")
    await _assign(api, admin, unassigned, agent)  # unassigned: the new Agent saw it
    assert await _removed(socket, operation) == gid("Conversation", unassigned.id)
    await socket.close()
