"""Live inbox over graphql-transport-ws, spoken by an independent client (`websockets`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from sqlmodel import select
from starlette.applications import Starlette
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from websockets.typing import Subprotocol

from tests.fixtures import webhooks as wh
from tests.fixtures.api import gql, token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.factories import Actor
from tests.fixtures.live import (
    ADDED,
    SECRET,
    closed_with,
    inbound,
    listeners,
    live_server,
    signed_webhook,
    until_listening,
)
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import decode_global_id, encode_global_id
from weflux.models import (
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    Organization,
    WhatsAppAccount,
)
from weflux.realtime import hub

CONVERSATIONS = "subscription { conversationUpdated { id assignee { id } unreadCount } }"
ASSIGN = (
    """mutation($input: AssignConversationInput!) { assignConversation(input: $input) { id } }"""
)


# Another customer: a new conversation, unassigned, that every member sees.
NEWCOMER = "16505559876"


async def _conversation_id(db: Database, org: Organization) -> str:
    for _ in range(100):  # processing runs just after Meta's 200
        async with db.session(org.id) as session:
            conversation = (await session.exec(select(Conversation))).first()
        if conversation is not None:
            return encode_global_id("Conversation", conversation.id)
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook was not processed")


async def _witness(live: str, live_app: Starlette, http: httpx.AsyncClient, admin: Actor) -> Any:
    """An Admin's socket on `messageAdded`, listening: it sees every message once published."""
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    operation = await socket.subscribe(ADDED)
    await until_listening(live_app, listeners(live_app) + 1)
    return socket, operation


async def _text(socket: GraphQLSocket, operation: str) -> str:
    return str((await socket.next(operation))["payload"]["data"]["messageAdded"]["text"])


async def test_a_new_inbound_message_reaches_a_subscriber(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    operation = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    await inbound(http, "Hello from the customer")
    frame = await socket.next(operation)
    assert frame["type"] == "next", frame
    message = frame["payload"]["data"]["messageAdded"]
    assert message["text"] == "Hello from the customer"
    assert message["direction"] == "INBOUND"
    assert message["conversation"]["contact"]["name"].startswith("Customer")
    await socket.close()


async def test_agents_only_receive_what_they_may_see(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
) -> None:
    agent_socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    added = await agent_socket.subscribe(ADDED)
    updates = await agent_socket.subscribe(CONVERSATIONS)
    await until_listening(live_app, 2)
    await inbound(http, "unassigned: every agent sees it")
    assert (await agent_socket.next(added))["payload"]["data"]["messageAdded"]["text"].startswith(
        "unassigned"
    )
    assert (await agent_socket.next(updates))["type"] == "next"

    # an Admin gives the conversation to themself: it leaves the agent's view
    admin_token = await token_for(http, admin)
    conversation_id = await _conversation_id(db, org)
    me = encode_global_id("Member", admin.membership.id)
    await gql(
        http, admin_token, ASSIGN, {"input": {"conversationId": conversation_id, "assigneeId": me}}
    )
    witness, watched = await _witness(live, live_app, http, admin)
    await inbound(http, "assigned to the admin now")
    assert await _text(witness, watched) == "assigned to the admin now"  # published
    # then a later message the agent may see is the next thing the agent receives
    await inbound(http, "a new customer", sender=NEWCOMER)
    assert await _text(witness, watched) == "a new customer"
    assert await _text(agent_socket, added) == "a new customer"
    update = (await agent_socket.next(updates))["payload"]["data"]["conversationUpdated"]
    assert update["id"] != conversation_id
    await agent_socket.close()
    await witness.close()


async def test_resume_after_a_cursor_replays_then_continues_without_gap_or_duplicate(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    token = await token_for(http, admin)
    first_socket = await GraphQLSocket.connect(live, token)
    operation = await first_socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    await inbound(http, "one")
    cursor = (await first_socket.next(operation))["payload"]["data"]["messageAdded"]["cursor"]
    await first_socket.close()

    await inbound(http, "two")  # while nobody listens
    await inbound(http, "three")
    socket = await GraphQLSocket.connect(live, token)
    resumed = await socket.subscribe(ADDED, {"after": cursor})
    texts = [
        (await socket.next(resumed))["payload"]["data"]["messageAdded"]["text"] for _ in range(2)
    ]
    assert sorted(texts) == ["three", "two"]  # two webhooks processed concurrently: any order
    await inbound(http, "four")
    assert (await socket.next(resumed))["payload"]["data"]["messageAdded"]["text"] == "four"
    await inbound(http, "five")  # and nothing came twice in between
    assert (await socket.next(resumed))["payload"]["data"]["messageAdded"]["text"] == "five"
    await socket.close()


async def test_logout_closes_the_sessions_sockets_with_4401(
    live: str, http: httpx.AsyncClient, agent: Actor
) -> None:
    token = await token_for(http, agent)
    socket = await GraphQLSocket.connect(live, token)
    await socket.subscribe(ADDED)
    other = await GraphQLSocket.connect(live, await token_for(http, agent))  # another session
    response = await http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert await closed_with(socket) == 4401
    await other.ping()  # only the revoked session: the other answers after the logout
    await other.close()


async def test_removing_a_member_closes_their_sockets(
    live: str, http: httpx.AsyncClient, admin: Actor, agent: Actor
) -> None:
    socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    await gql(
        http,
        await token_for(http, admin),
        "mutation($id: ID!) { removeMember(memberId: $id) }",
        {"id": encode_global_id("Member", agent.membership.id)},
    )
    assert await closed_with(socket) == 4401


async def test_a_role_change_changes_what_the_socket_receives(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
) -> None:
    admin_token = await token_for(http, admin)
    await inbound(http, "first")
    conversation_id = await _conversation_id(db, org)
    me = encode_global_id("Member", admin.membership.id)
    await gql(
        http, admin_token, ASSIGN, {"input": {"conversationId": conversation_id, "assigneeId": me}}
    )

    socket = await GraphQLSocket.connect(live, await token_for(http, manager))
    operation = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    await inbound(http, "a manager sees every conversation")
    assert (await socket.next(operation))["type"] == "next"

    await gql(
        http,
        admin_token,
        "mutation($id: ID!) { updateMemberRole(input: {memberId: $id, role: AGENT}) { role } }",
        {"id": encode_global_id("Member", manager.membership.id)},
    )  # its sockets are re-checked before it answers (after its commit, in this process)
    witness, watched = await _witness(live, live_app, http, admin)
    await inbound(http, "an agent does not see the admin's conversation")
    assert await _text(witness, watched) == "an agent does not see the admin's conversation"
    await inbound(http, "a new customer", sender=NEWCOMER)
    assert await _text(witness, watched) == "a new customer"
    assert await _text(socket, operation) == "a new customer"
    await socket.close()
    await witness.close()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_connection_limits(live: str, http: httpx.AsyncClient, admin: Actor) -> None:
    token = await token_for(http, admin)
    socket = await GraphQLSocket.connect(live, token)
    for _ in range(20):
        await socket.subscribe(CONVERSATIONS)
    refused = await socket.subscribe(CONVERSATIONS)  # the 21st
    frame = await socket.next(refused)
    assert frame["type"] == "error"
    assert frame["payload"][0]["extensions"] == {"code": "RATE_LIMITED", "limit": 20}
    await socket.close()

    big = await GraphQLSocket.connect(live, token)
    await big.connection.send("x" * (65 * 1024))
    assert await closed_with(big, within=2) is not None

    raw = await websockets.connect(
        live.replace("http://", "ws://") + "/graphql",
        subprotocols=[Subprotocol("graphql-transport-ws")],
    )
    raw.close_timeout = 1
    await raw.send('{"type": "connection_init", "payload": {"authorization": "Bearer nope"}}')
    await asyncio.wait_for(raw.wait_closed(), 5)
    assert raw.close_code == 4403


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_socket_closes_with_4401_when_its_access_token_expires(
    live_settings: Settings, agent: Actor
) -> None:
    short = live_settings.model_copy(update={"access_token_ttl": timedelta(seconds=2)})
    async with (
        live_server(create_app(short)) as base,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as client,
    ):
        socket = await GraphQLSocket.connect(base, await token_for(client, agent))
        await socket.subscribe(ADDED)
        await socket.ping()  # open while its token is valid
        assert await closed_with(socket, within=10) == 4401


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_subscriber_that_cannot_keep_up_is_disconnected(
    live: str,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
    live_app: Starlette,
) -> None:
    monkeypatch.setattr(hub, "QUEUE_LIMIT", 2)
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    body_messages = [
        wh.text_message(body=f"burst {n}", from_wa_id=f"1650666{n:04d}") for n in range(50)
    ]
    body = wh.encode(
        wh.webhook_body(wh.messages_change(messages=body_messages, contacts=[wh.contact()]))
    )
    response = await http.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": wh.sign(body, SECRET), "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    # the client reads nothing; the server cuts it off rather than queue without bound
    assert await closed_with(socket, within=5) == 4008


async def test_status_and_account_changes_are_live(
    live: str,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    live_app: Starlette,
) -> None:
    await inbound(http, "hello")
    conversation_id = await _conversation_id(db, org)
    wamid = wh.new_wamid()
    async with db.session(org.id) as session:
        session.add(
            Message(
                org_id=org.id,
                conversation_id=decode_global_id(conversation_id, "Conversation"),
                direction=MessageDirection.OUTBOUND,
                type="text",
                text="reply",
                status=MessageStatus.SENT,
                wa_message_id=wamid,
            )
        )
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    statuses = await socket.subscribe(
        "subscription($c: ID) { messageUpdated(conversationId: $c) { status waMessageId } }",
        {"c": conversation_id},
    )
    accounts = await socket.subscribe(
        "subscription { whatsAppAccountUpdated { messagingLimitTier } }"
    )
    await until_listening(live_app, 2)
    for body in (
        wh.webhook_body(wh.messages_change(statuses=[wh.status(wamid, "delivered")])),
        wh.webhook_body(wh.quality_change(current_limit="TIER_100K")),
    ):
        await signed_webhook(http, body)
    status = (await socket.next(statuses))["payload"]["data"]["messageUpdated"]
    assert status == {"status": "DELIVERED", "waMessageId": wamid}
    account = (await socket.next(accounts))["payload"]["data"]["whatsAppAccountUpdated"]
    assert account == {"messagingLimitTier": "TIER_100K"}
    await socket.close()


async def test_a_reaction_updates_its_message_live(
    live: str,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    live_app: Starlette,
) -> None:
    """Given a customer's message and a member subscribed to messageUpdated
    When the customer reacts to it, then removes the reaction
    Then the message arrives twice, with the reaction and then without; no messageAdded."""
    await inbound(http, "hello")
    conversation_id = await _conversation_id(db, org)
    async with db.session(org.id) as session:
        wamid = (await session.exec(select(Message.wa_message_id))).one()
    assert wamid is not None
    socket, added = await _witness(live, live_app, http, admin)
    updates = await socket.subscribe(
        "subscription($c: ID) { messageUpdated(conversationId: $c) { waMessageId "
        "reactions { emoji fromContact } } }",
        {"c": conversation_id},
    )
    await until_listening(live_app, listeners(live_app) + 1)

    for reaction in (wh.reaction_message(wamid, emoji="🎉"), wh.unreaction_message(wamid)):
        change = wh.messages_change(messages=[reaction], contacts=[wh.contact()])
        await signed_webhook(http, wh.webhook_body(change))
        frame = (await socket.next(updates))["payload"]["data"]["messageUpdated"]
        expected = (
            [{"emoji": "🎉", "fromContact": True}] if reaction["reaction"].get("emoji") else []
        )
        assert frame == {"waMessageId": wamid, "reactions": expected}

    await inbound(http, "after")  # a later message: the first messageAdded the witness gets
    assert await _text(socket, added) == "after"
    await socket.close()


async def test_an_event_is_executed_once_per_visibility_class_and_document(
    live: str,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    monkeypatch: pytest.MonkeyPatch,
    live_app: Starlette,
) -> None:
    executed: list[str] = []
    original = StrawberryGraphQLCoreExecutionContext.execute_operation

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.operation.operation.value == "subscription":
            executed.append(self.operation.loc.source.body if self.operation.loc else "")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_operation", counting)
    short = "subscription { messageAdded { text } }"
    sockets = []
    for actor, query in (
        (admin, ADDED),
        (admin, ADDED),
        (manager, ADDED),  # the same class as the Admin: shares the execution
        (agent, ADDED),  # an Agent's own class
        (admin, short),  # another document
    ):
        socket = await GraphQLSocket.connect(live, await token_for(http, actor))
        sockets.append((socket, await socket.subscribe(query), query))
    await until_listening(live_app, len(sockets))
    await inbound(http, "shared")
    for socket, operation, query in sockets:
        data = (await socket.next(operation))["payload"]["data"]["messageAdded"]
        assert data["text"] == "shared"
        assert ("direction" in data) == (query == ADDED)
        await socket.close()
    assert sorted(executed) == sorted([ADDED, ADDED, short])  # all, agent, short


async def test_resuming_subscribers_of_one_class_share_a_synchronous_execution(
    live: str,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
    live_app: Starlette,
) -> None:
    # given: two Admins' sockets resuming after the same cursor (never grouped: each
    # listens and executes), with a selection that resolves without awaiting
    witness, added = await _witness(live, live_app, http, admin)
    await inbound(http, "first")
    cursor = (await witness.next(added))["payload"]["data"]["messageAdded"]["cursor"]
    query = 'subscription { messageAdded(after: "%s") { text } }' % cursor  # noqa: UP031
    sockets = []
    listening = listeners(live_app)
    for _ in range(2):
        socket = await GraphQLSocket.connect(live, await token_for(http, admin))
        sockets.append((socket, await socket.subscribe(query)))
    await until_listening(live_app, listening + 2)
    await inbound(http, "second")  # replayed or live: once each is live only
    for socket, operation in sockets:
        assert await _text(socket, operation) == "second"
    executed: list[str] = []
    original = StrawberryGraphQLCoreExecutionContext.execute_operation

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.root_value, "_weflux_shared_results", None) is not None:
            executed.append(self.operation.loc.source.body if self.operation.loc else "")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StrawberryGraphQLCoreExecutionContext, "execute_operation", counting)
    # when
    await inbound(http, "third")
    # then: both receive it, from one execution
    for socket, operation in sockets:
        assert await _text(socket, operation) == "third"
        await socket.close()
    await witness.close()
    assert executed.count(query) == 1
