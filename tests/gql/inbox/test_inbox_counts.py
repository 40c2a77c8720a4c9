"""`inboxCounts` and `inboxCountsUpdated`: what each role counts, and pushes only on change.

Every negative ("this change pushed nothing") is proved by a later change that must come
after it: the next frame is the later change's counts.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import counting, opening_statements
from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import ASSIGN, MARK_READ, Api, gid, workspace
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.models import Conversation, ConversationStatus, Organization, WhatsAppAccount

COUNTS = "query { inboxCounts { mine unassigned all unread } }"
UPDATED = "subscription { inboxCountsUpdated { mine unassigned all unread } }"
LABEL = """mutation { createLabel(input: {name: "vip", color: "#aa0000"}) { id } }"""
SET_LABELS = """mutation($input: SetConversationLabelsInput!) {
  setConversationLabels(input: $input) { id } }"""
ROLE = """mutation($input: UpdateMemberRoleInput!) { updateMemberRole(input: $input) { id } }"""
REMOVE = "mutation($id: ID!) { removeMember(memberId: $id) }"
ERASE = """mutation($id: ID!) { eraseContact(contactId: $id) { id } }"""
STATUS = """mutation($input: UpdateConversationStatusInput!) {
  updateConversationStatus(input: $input) { id } }"""


def counts(mine: int, unassigned: int, all: int, unread: int) -> dict[str, int]:
    return {"mine": mine, "unassigned": unassigned, "all": all, "unread": unread}


async def _inbox(
    db: Database, org: Organization, account: WhatsAppAccount, agent: Actor, other: Actor
) -> dict[str, Conversation]:
    """The agent's (unread), another agent's (unread), an unassigned PENDING one (read),
    an unassigned RESOLVED one (unread: not counted)."""
    async with workspace(db, org.id) as session:
        return {
            "agents": await create_conversation(
                session, account=account, assignee_membership_id=agent.membership.id, unread_count=2
            ),
            "others": await create_conversation(
                session, account=account, assignee_membership_id=other.membership.id, unread_count=1
            ),
            "free": await create_conversation(
                session, account=account, status=ConversationStatus.PENDING
            ),
            "done": await create_conversation(
                session, account=account, status=ConversationStatus.RESOLVED, unread_count=4
            ),
        }


async def test_each_role_counts_what_it_sees_and_no_other_workspace(
    api: Api,
    db: Database,
    org: Organization,
    other_org: Organization,
    account: WhatsAppAccount,
    other_account: WhatsAppAccount,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given an inbox of four conversations (one RESOLVED) and one in another workspace,
    when each member asks for `inboxCounts`,
    then the Manager counts the three that are not RESOLVED, the Agent their own and the
    unassigned one, the other Agent theirs, and the other workspace's Admin only theirs."""
    await _inbox(db, org, account, agent, other_agent)
    async with workspace(db, other_org.id) as session:
        await create_conversation(session, account=other_account, unread_count=1)

    seen = [await api(actor, COUNTS) for actor in (manager, agent, other_agent, other_admin)]

    assert [body["data"]["inboxCounts"] for body in seen] == [
        counts(0, 1, 3, 2),
        counts(1, 1, 2, 1),
        counts(1, 1, 2, 1),
        counts(0, 1, 1, 1),
    ]


def _counts(frame: dict[str, Any]) -> dict[str, int]:
    assert frame["type"] == "next", frame
    value: dict[str, int] = frame["payload"]["data"]["inboxCountsUpdated"]
    return value


async def test_counts_are_pushed_on_change_only_to_those_whose_counts_change(
    broker_app: Starlette,
    served: httpx.AsyncClient,
    db: Database,
    org: Organization,
    other_org: Organization,
    account: WhatsAppAccount,
    other_account: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given an Admin, an Agent and another workspace's Admin following their counts,
    when a conversation moves between people the Agent cannot see, a label is set, a
    conversation is read, and the other workspace changes,
    then each receives their current counts first and then exactly the changes of their
    own counts, on the in-process broker and on Redis alike."""
    rows = await _inbox(db, org, account, agent, other_agent)
    base = str(served.base_url)
    admin_token = await token_for(served, admin)
    admin_socket = await GraphQLSocket.connect(base, admin_token)
    agent_socket = await GraphQLSocket.connect(base, await token_for(served, agent))
    other_token = await token_for(served, other_admin)
    other_socket = await GraphQLSocket.connect(base, other_token)
    admins, agents, others = (
        await admin_socket.subscribe(UPDATED),
        await agent_socket.subscribe(UPDATED),
        await other_socket.subscribe(UPDATED),
    )
    assert _counts(await admin_socket.next(admins)) == counts(0, 1, 3, 2)
    assert _counts(await agent_socket.next(agents)) == counts(1, 1, 2, 1)
    assert _counts(await other_socket.next(others)) == counts(0, 0, 0, 0)

    async def as_admin(query: str, variables: dict[str, Any] | None = None) -> None:
        response = await gql(served, admin_token, query, variables)
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text

    others_id = gid("Conversation", rows["others"].id)
    # the other Agent's conversation goes to the Admin: the Admin's `mine` moves, the
    # Agent (who sees it neither before nor after) is told nothing
    await as_admin(
        ASSIGN,
        {"input": {"conversationId": others_id, "assigneeId": gid("Member", admin.membership.id)}},
    )
    assert _counts(await admin_socket.next(admins)) == counts(1, 1, 3, 2)
    # a label changes no count: nobody is told
    label = (await gql(served, admin_token, LABEL)).json()["data"]["createLabel"]["id"]
    await as_admin(SET_LABELS, {"input": {"conversationId": others_id, "labelIds": [label]}})
    # then the Admin gives it up: unassigned now, the Agent sees it
    await as_admin(ASSIGN, {"input": {"conversationId": others_id, "assigneeId": None}})
    # the Agent's next frame is this one: the assignment to the Admin never reached them
    assert _counts(await agent_socket.next(agents)) == counts(1, 2, 3, 2)
    # the Admin's next frame is this one too: the label pushed nothing
    assert _counts(await admin_socket.next(admins)) == counts(0, 2, 3, 2)

    # the Agent reads their conversation: unread drops for both
    await as_admin(MARK_READ, {"id": gid("Conversation", rows["agents"].id)})
    assert _counts(await agent_socket.next(agents)) == counts(1, 2, 3, 1)
    assert _counts(await admin_socket.next(admins)) == counts(0, 2, 3, 1)

    # the other workspace's first frame since its initial one is its own change: none of
    # the changes above reached it
    async with workspace(db, other_org.id) as session:
        await create_conversation(session, account=other_account)
    async with workspace(db, other_org.id) as session:
        theirs = (await session.exec(select(Conversation))).one()
    response = await gql(
        served,
        other_token,
        STATUS,
        {"input": {"conversationId": gid("Conversation", theirs.id), "status": "PENDING"}},
    )
    assert "errors" not in response.json(), response.text
    assert _counts(await other_socket.next(others)) == counts(0, 1, 1, 0)
    for socket in (admin_socket, agent_socket, other_socket):
        await socket.close()


async def test_a_role_change_an_erasure_and_a_removal_are_counted(
    broker_app: Starlette,
    served: httpx.AsyncClient,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
) -> None:
    """Given a Manager following their counts,
    when an Admin makes them an Agent, then their counts shrink to what an Agent sees;
    when the Admin erases the contact of an unassigned conversation, then it leaves them;
    and when the Admin removes another Agent, that Agent's conversation joins them as
    unassigned."""
    rows = await _inbox(db, org, account, agent, other_agent)
    base = str(served.base_url)
    admin_token = await token_for(served, admin)
    socket = await GraphQLSocket.connect(base, await token_for(served, manager))
    operation = await socket.subscribe(UPDATED)
    assert _counts(await socket.next(operation)) == counts(0, 1, 3, 2)

    role = {"input": {"memberId": gid("Member", manager.membership.id), "role": "AGENT"}}
    response = await gql(served, admin_token, ROLE, role)
    assert "errors" not in response.json(), response.text
    # an Agent now: only the unassigned conversation is theirs to see
    assert _counts(await socket.next(operation)) == counts(0, 1, 1, 0)

    contact = gid("Contact", rows["free"].contact_id)
    response = await gql(served, admin_token, ERASE, {"id": contact})
    assert "errors" not in response.json(), response.text
    assert _counts(await socket.next(operation)) == counts(0, 0, 0, 0)

    # the other Agent leaves: their conversation is nobody's now, so this Agent sees it
    removal = {"id": gid("Member", other_agent.membership.id)}
    response = await gql(served, admin_token, REMOVE, removal)
    assert "errors" not in response.json(), response.text
    assert _counts(await socket.next(operation)) == counts(0, 1, 1, 1)
    await socket.close()


@pytest.mark.parametrize("size", [10, 60])
async def test_counting_is_one_statement_whatever_the_inbox(
    api: Api,
    app: Starlette,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
    size: int,
) -> None:
    """Given `size` conversations spread over the Admin, the Agent and nobody,
    when each asks for `inboxCounts`, then the answer cost one statement after the
    transaction's opening (`opening_statements`), whatever the size and the role."""
    assignees = [admin.membership.id, agent.membership.id, None]
    async with workspace(db, org.id) as session:
        for n in range(size):
            await create_conversation(
                session, account=account, assignee_membership_id=assignees[n % 3]
            )
    for actor in (admin, agent):
        await api(actor, "{ viewer { id } }")  # authentication warm: no statement of its own

        with counting(app) as statements:
            body = await api(actor, COUNTS)

        assert body["data"]["inboxCounts"]["all"] == (size if actor is admin else size * 2 // 3)
        assert len(statements) == opening_statements(db) + 1, statements
