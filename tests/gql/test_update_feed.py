"""`conversationUpdated(after:)` and `messageUpdated(after:)`: the change feed, resumed
across a server restart, with Agent visibility and workspace isolation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlmodel import col, select
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.inbox import MARK_READ, UPDATE_STATUS, Api, gid, workspace
from tests.fixtures.live import inbound, live_server, status_update, until_listening
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    Organization,
    WhatsAppAccount,
)
from weflux.pagination import encode_update_cursor

CONVERSATIONS = """subscription($after: String) { conversationUpdated(after: $after) {
  id updateCursor unreadCount contact { name } } }"""
MESSAGES = """subscription($after: String) { messageUpdated(after: $after) {
  id updateCursor status text } }"""


async def _data(socket: GraphQLSocket, operation: str, field: str) -> dict[str, Any]:
    frame = await socket.next(operation, timeout=10)
    assert frame["type"] == "next", frame
    assert "errors" not in frame["payload"], frame
    data: dict[str, Any] = frame["payload"]["data"][field]
    return data


async def _outbound(db: Database, org: Organization, texts: list[str]) -> list[str]:
    """Sent outbound messages in the customer's conversation, made by `inbound` first."""
    for _ in range(200):  # processing runs just after Meta's 200
        async with db.session(org.id) as session:
            conversation = (await session.exec(select(Conversation))).first()
            if conversation is not None:
                wamids = []
                for text in texts:
                    message = await create_message(
                        session,
                        conversation,
                        text=text,
                        direction=MessageDirection.OUTBOUND,
                        status=MessageStatus.SENT,
                    )
                    assert message.wa_message_id is not None
                    wamids.append(message.wa_message_id)
                return wamids
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook was not processed")


async def _stored(
    db: Database, org: Organization, texts: set[str], *, delivered: str | None = None
) -> None:
    """Wait until these inbound messages (and that status) are stored: webhooks are
    processed just after their 200."""
    async with asyncio.timeout(10):
        while True:
            async with db.session(org.id) as session:
                rows = (await session.exec(select(Message))).all()
            found = {m.text for m in rows}
            done = {m.text for m in rows if m.status == MessageStatus.DELIVERED}
            if texts <= found and (delivered is None or delivered in done):
                return
            await asyncio.sleep(0.05)


async def test_changes_made_while_away_replay_once_on_a_restarted_server_then_live_ones(
    dialect: str,
    live: str,
    live_app: Starlette,
    live_settings: Settings,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given a client that saw one conversation change and one status change, then went away,
    when conversations and statuses change meanwhile (one conversation twice) and it
    resumes both subscriptions with its last `updateCursor`s on another server process,
    then it receives each changed conversation and message once, as it is now, in change
    order, then live changes, and nothing twice."""
    await inbound(http, "first", sender="16505550001")
    wamids = await _outbound(db, org, ["out 1", "out 2"])
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    conversations = await socket.subscribe(CONVERSATIONS)
    messages = await socket.subscribe(MESSAGES)
    await until_listening(live_app, 2)
    await inbound(http, "seen", sender="16505550001")
    seen = await _data(socket, conversations, "conversationUpdated")
    await status_update(http, wamids[0], "delivered")
    seen_message = await _data(socket, messages, "messageUpdated")
    assert seen_message["status"] == "DELIVERED"
    await socket.close()

    # Away: two new conversations, one of them changed twice; two status changes.
    await inbound(http, "new 2", sender="16505550002")
    await inbound(http, "new 3", sender="16505550003")
    await _stored(db, org, {"new 2", "new 3"})  # (a contact's first two at once race)
    await inbound(http, "again 2", sender="16505550002")
    await status_update(http, wamids[0], "read")
    await status_update(http, wamids[1], "delivered")
    await _stored(db, org, {"again 2"}, delivered="out 2")

    async with (
        live_server(create_app(live_settings)) as restarted,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=restarted) as again,
    ):
        socket = await GraphQLSocket.connect(restarted, await token_for(again, admin))
        conversations = await socket.subscribe(CONVERSATIONS, {"after": seen["updateCursor"]})
        replayed = [await _data(socket, conversations, "conversationUpdated") for _ in "ab"]
        # Webhooks are processed concurrently: the change order is the database's.
        async with db.session(org.id) as session:
            in_order = (
                await session.exec(
                    select(Contact.name)
                    .join(Conversation, col(Conversation.contact_id) == col(Contact.id))
                    .where(col(Contact.name) != "Customer 0001")
                    .order_by(col(Conversation.update_seq))
                )
            ).all()
        assert [c["contact"]["name"] for c in replayed] == list(in_order)
        assert {c["contact"]["name"]: c["unreadCount"] for c in replayed} == {
            "Customer 0002": 2,
            "Customer 0003": 1,
        }
        messages = await socket.subscribe(MESSAGES, {"after": seen_message["updateCursor"]})
        statuses = [await _data(socket, messages, "messageUpdated") for _ in "ab"]
        assert [(m["text"], m["status"]) for m in statuses] == [
            ("out 1", "READ"),
            ("out 2", "DELIVERED"),
        ]
        await inbound(again, "live", sender="16505550004")
        live_one = await _data(socket, conversations, "conversationUpdated")
        assert live_one["contact"]["name"] == "Customer 0004"
        await inbound(again, "and the next", sender="16505550005")  # nothing twice before
        assert (await _data(socket, conversations, "conversationUpdated"))["contact"][
            "name"
        ] == "Customer 0005"
        await socket.close()


async def test_a_replay_holds_only_what_the_caller_may_see(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    other_org: Organization,
    channel: WhatsAppAccount,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given conversations of an Agent's, of another Agent's, unassigned, and another
    workspace's, all changed since the start of the feed,
    when the Agent and the other workspace's Admin replay `conversationUpdated` from it,
    then the Agent receives theirs and the unassigned one only, the other Admin only their
    workspace's, and each then the next live change of their own view first."""
    async with workspace(db, org.id) as session:
        mine = await create_conversation(session, assignee_membership_id=agent.membership.id)
        await create_conversation(session, assignee_membership_id=other_agent.membership.id)
        unassigned = await create_conversation(session)
    async with workspace(db, other_org.id) as session:
        theirs = await create_conversation(session, org_id=other_org.id, unread_count=1)
    start = {"after": encode_update_cursor(0)}
    a = await GraphQLSocket.connect(live, await token_for(http, agent))
    o = await GraphQLSocket.connect(live, await token_for(http, other_admin))
    a_op = await a.subscribe(CONVERSATIONS, start)
    o_op = await o.subscribe(CONVERSATIONS, start)
    assert [(await _data(a, a_op, "conversationUpdated"))["id"] for _ in "ab"] == [
        gid("Conversation", mine.id),
        gid("Conversation", unassigned.id),
    ]
    assert (await _data(o, o_op, "conversationUpdated"))["id"] == gid("Conversation", theirs.id)
    await until_listening(live_app, 2)
    async with workspace(db, org.id) as session:
        later = await create_conversation(session)
    await inbound(http, "a live change", sender="16505550009")
    assert (await _data(a, a_op, "conversationUpdated"))["id"] == gid("Conversation", later.id)
    read = await Api(http)(other_admin, MARK_READ, {"id": gid("Conversation", theirs.id)})
    assert "errors" not in read, read
    # The other workspace's first live frame is its own (`org`'s changes moved nothing).
    assert (await _data(o, o_op, "conversationUpdated"))["id"] == gid("Conversation", theirs.id)
    await a.close()
    await o.close()


async def test_a_cursor_ahead_of_the_workspace_s_feed_is_refused_not_silent(
    dialect: str,
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
) -> None:
    """Given a workspace whose latest change is the Admin's own conversation (which an
    Agent cannot see),
    when an Agent resumes `conversationUpdated`, `messageUpdated` and `conversationRemoved`
    from a position the feed never handed out (a cursor of another workspace's feed, or
    of the database before a restore), and then from the latest position,
    then the first three are refused (BAD_USER_INPUT, `after` "Unknown") instead of
    staying silent until the feed passes it; the latest position, though the Agent never
    saw its change, is accepted and the next visible change arrives."""
    async with workspace(db, org.id) as session:
        unassigned = await create_conversation(session)
        hidden = await create_conversation(session, assignee_membership_id=admin.membership.id)
    async with workspace(db, org.id) as session:
        row = await session.get(Conversation, hidden.id)
        assert row is not None
        head = row.update_seq
    socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    ahead = {"after": encode_update_cursor(head + 1000)}
    removed = "subscription($after: String) { conversationRemoved(after: $after) }"

    for document in (CONVERSATIONS, MESSAGES, removed):
        operation = await socket.subscribe(document, ahead)
        error = await socket.refusal(operation)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert error["extensions"]["details"] == [{"field": "after", "message": "Unknown"}]

    resumed = await socket.subscribe(CONVERSATIONS, {"after": encode_update_cursor(head)})
    await until_listening(live_app, 1)
    status = {"conversationId": gid("Conversation", unassigned.id), "status": "PENDING"}
    changed = await Api(http)(agent, UPDATE_STATUS, {"input": status})
    assert "errors" not in changed, changed
    assert (await _data(socket, resumed, "conversationUpdated"))["id"] == gid(
        "Conversation", unassigned.id
    )
    await socket.close()


async def test_an_empty_after_is_an_invalid_cursor_not_a_live_start(
    live: str, http: httpx.AsyncClient, agent: Actor
) -> None:
    """Given an Agent's socket,
    when it resumes `messageAdded`, `conversationUpdated`, `messageUpdated` and
    `conversationRemoved` with `after: ""` (a client that stored an empty cursor),
    then each is refused (BAD_USER_INPUT, `after` "Invalid"): starting live instead would
    silently skip what the client missed. Only null means "live only"."""
    socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    added = "subscription($after: String) { messageAdded(after: $after) { id } }"
    removed = "subscription($after: String) { conversationRemoved(after: $after) }"

    for document in (added, CONVERSATIONS, MESSAGES, removed):
        operation = await socket.subscribe(document, {"after": ""})
        error = await socket.refusal(operation)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert error["extensions"]["details"] == [{"field": "after", "message": "Invalid"}]
    await socket.close()


async def test_a_cursor_past_the_feed_s_integer_range_is_refused_not_a_closed_socket(
    dialect: str, live: str, http: httpx.AsyncClient, agent: Actor
) -> None:
    """Given an Agent's socket,
    when it resumes `conversationUpdated`, `messageUpdated` and `conversationRemoved`
    from a position of 19 digits past the largest the feed can hold (a 64-bit integer),
    then each is refused (BAD_USER_INPUT, `after` "Invalid") and the socket stays open:
    the database's overflow was an error of ours (INTERNAL_SERVER_ERROR), so the socket
    closed 1013 and graphql-ws resubscribed with the same cursor, closing again."""
    socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    removed = "subscription($after: String) { conversationRemoved(after: $after) }"
    for position in (2**63, 10**19 - 1):
        for document in (CONVERSATIONS, MESSAGES, removed):
            operation = await socket.subscribe(document, {"after": encode_update_cursor(position)})
            error = await socket.refusal(operation)
            assert error["extensions"]["code"] == "BAD_USER_INPUT", error
            assert error["extensions"]["details"] == [{"field": "after", "message": "Invalid"}]
    await socket.ping()
    await socket.close()
