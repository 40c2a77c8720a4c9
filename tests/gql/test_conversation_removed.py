"""`conversationRemoved`: a conversation leaving the subscriber's view (reassigned away from
an Agent, erased, the subscriber's role narrowed to AGENT), and nobody else's."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, Api, gid, set_role, workspace
from tests.fixtures.live import live_server, until_listening
from tests.fixtures.ws import GraphQLSocket, acts_as
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.gql import live as live_module
from weflux.lifecycle.worker import Lifecycle, run_retention
from weflux.models import Conversation, ConversationRemoval, Organization, utcnow
from weflux.pagination import encode_update_cursor

REMOVED = "subscription($after: String) { conversationRemoved(after: $after) }"
UPDATE_CURSOR = "query($id: ID!) { node(id: $id) { ... on Conversation { updateCursor } } }"
ERASE = "mutation($id: ID!) { eraseContact(contactId: $id) { id } }"


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
    live: str, http: httpx.AsyncClient, actors: list[Actor], after: str | None = None
) -> list[tuple[GraphQLSocket, str]]:
    subscribed = []
    for actor in actors:
        socket = await GraphQLSocket.connect(live, await token_for(http, actor))
        variables = {"after": after} if after else None
        subscribed.append((socket, await socket.subscribe(REMOVED, variables)))
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


async def _erase(api: Api, actor: Actor, conversation: Conversation) -> None:
    """`actor` erases the conversation's contact (no error)."""
    erased = await api(actor, ERASE, {"id": gid("Contact", conversation.contact_id)})
    assert "errors" not in erased, erased


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

    await _erase(api, admin, agents)
    assert await _removed(b, b_op) == gid("Conversation", agents.id)
    # The Manager's first removal is the erasure: reassignments hide nothing from them.
    assert await _removed(m, m_op) == gid("Conversation", agents.id)

    await _erase(api, other_admin, elsewhere)
    assert await _removed(o, o_op) == gid("Conversation", elsewhere.id)
    for socket in (a, b, m, o):
        await socket.close()


async def test_a_removal_whose_conversation_moved_on_before_its_check_is_sent_once(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
    other_agent: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given an Agent subscribed to removals,
    when an unassigned conversation is assigned to them (a removal for the other Agents)
    and, before their subscription has checked that removal against what they see, it is
    assigned away from them again,
    then they are told once (by the second removal), not twice: the page of removals and
    the visibility check are two reads, and the second one saw the later change."""
    moving = await _conversation(db, org.id, None)
    later = await _conversation(db, org.id, agent)
    checked = asyncio.Event()
    moved_on = asyncio.Event()
    real_check = live_module._still_visible

    async def late_check(info: Any, viewer: Any, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        if moving.id in ids and not checked.is_set():
            checked.set()
            await moved_on.wait()  # the conversation moves on between the two reads
        return await real_check(info, viewer, ids)

    monkeypatch.setattr(live_module, "_still_visible", late_check)
    api = Api(http)
    [(socket, operation)] = await _subscribed(live, http, [agent])
    await until_listening(live_app, 1)

    await _assign(api, admin, moving, agent)
    await asyncio.wait_for(checked.wait(), 10)
    await _assign(api, admin, moving, other_agent)
    moved_on.set()
    assert await _removed(socket, operation) == gid("Conversation", moving.id)
    await _erase(api, admin, later)
    # Next comes the erasure's removal, not the first one's late copy.
    assert await _removed(socket, operation) == gid("Conversation", later.id)
    await socket.close()


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

    await set_role(api, admin, manager, "AGENT")
    assert await _removed(socket, operation) == gid("Conversation", others.id)
    await acts_as(socket, "AGENT")
    await _assign(api, admin, unassigned, agent)  # unassigned: the new Agent saw it
    assert await _removed(socket, operation) == gid("Conversation", unassigned.id)
    await socket.close()


async def test_removals_made_while_away_replay_once_on_a_restarted_server_then_live_ones(
    dialect: str,
    live_settings: Settings,
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
    """Given a Manager, two Agents and another workspace's Admin who last saw the feed at a
    conversation's `updateCursor`, and went away,
    when meanwhile the Manager is made an Agent, the Manager's conversation and an
    unassigned one are assigned to an Agent, another of the Manager's is reassigned away
    and back, an Agent's is reassigned to an Admin and an unassigned contact is erased,
    and they resume `conversationRemoved(after:)` on another server process,
    then each receives exactly the ids that left their own view, once (not the one that
    came back, not others' reassignments), then live removals; the other workspace
    nothing of it."""
    others = await _conversation(db, org.id, agent)
    managers = await _conversation(db, org.id, manager)
    bounced = await _conversation(db, org.id, manager)
    unassigned = await _conversation(db, org.id, None)
    to_erase = await _conversation(db, org.id, None)
    marker = await _conversation(db, org.id, None)
    api = Api(http)
    seen = await api(admin, UPDATE_CURSOR, {"id": gid("Conversation", marker.id)})
    cursor = seen["data"]["node"]["updateCursor"]

    # Away.
    await set_role(api, admin, manager, "AGENT")
    await _assign(api, admin, managers, agent)
    await _assign(api, admin, unassigned, agent)
    await _assign(api, admin, bounced, admin)
    await _assign(api, admin, bounced, manager)
    await _assign(api, admin, others, admin)  # between others: no Agent but its own learns
    await _erase(api, admin, to_erase)

    expected = [
        (manager, {others.id, managers.id, unassigned.id, to_erase.id}),
        (agent, {others.id, to_erase.id}),
        (other_agent, {unassigned.id, to_erase.id}),
    ]
    async with (
        live_server(create_app(live_settings)) as restarted,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=restarted) as again,
    ):
        subscribed = await _subscribed(restarted, again, [a for a, _ in expected], cursor)
        [(o, o_op)] = await _subscribed(restarted, again, [other_admin], encode_update_cursor(0))
        for (socket, operation), (_, ids) in zip(subscribed, expected, strict=True):
            replayed = [await _removed(socket, operation) for _ in ids]
            assert sorted(replayed) == sorted(gid("Conversation", i) for i in ids)

        late = await _conversation(db, org.id, None)
        await _assign(Api(again), admin, late, admin)  # live: every Agent loses it
        for socket, operation in subscribed:
            assert await _removed(socket, operation) == gid("Conversation", late.id)
        theirs = await _conversation(db, other_org.id, None)
        await _erase(Api(again), other_admin, theirs)
        assert await _removed(o, o_op) == gid("Conversation", theirs.id)
        for socket, _ in [*subscribed, (o, o_op)]:
            await socket.close()


async def test_a_removal_replay_needs_a_valid_cursor_and_starts_when_the_member_joined(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
) -> None:
    """Given an unassigned conversation assigned to the Admin (a removal for every Agent),
    when an Agent resumes from the feed's start, and a careless client passes a malformed
    cursor,
    then the Agent receives that removal, and the malformed cursor a BAD_USER_INPUT error."""
    conversation = await _conversation(db, org.id, None)
    await _assign(Api(http), admin, conversation, admin)
    [(socket, operation)] = await _subscribed(live, http, [agent], encode_update_cursor(0))
    assert await _removed(socket, operation) == gid("Conversation", conversation.id)
    bad = await socket.subscribe(REMOVED, {"after": "not a cursor"})
    error = await socket.refusal(bad)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    await socket.close()


async def test_a_cursor_older_than_the_removals_kept_is_refused(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
) -> None:
    """Given a removal 40 days old (an unassigned conversation given to the Admin), deleted
    by the daily retention (removals kept 30 days), and a recent one,
    when an Agent resumes from before the deleted removal, then from its position,
    then the first is refused (BAD_USER_INPUT, `after` "Expired"), and the second receives
    the recent removal."""
    old = await _conversation(db, org.id, None)
    recent = await _conversation(db, org.id, None)
    await _assign(Api(http), admin, old, admin)
    async with workspace(db, org.id) as session:
        removal = (await session.exec(select(ConversationRemoval))).one()
        removal.created_at = utcnow() - timedelta(days=40)
        session.add(removal)
        pruned = removal.update_seq
    lifecycle = Lifecycle(
        db=db,
        keyring=KeyRing([("k", os.urandom(32))]),
        conversation_removal_retention=timedelta(days=30),
    )
    await run_retention(lifecycle)
    await _assign(Api(http), admin, recent, admin)

    [(socket, operation)] = await _subscribed(live, http, [agent], encode_update_cursor(0))
    error = await socket.refusal(operation)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert error["extensions"]["details"] == [{"field": "after", "message": "Expired"}]
    resumed = await socket.subscribe(REMOVED, {"after": encode_update_cursor(pruned)})
    assert await _removed(socket, resumed) == gid("Conversation", recent.id)
    await socket.close()
