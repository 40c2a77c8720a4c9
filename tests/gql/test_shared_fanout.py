"""Shared fan-out: alike subscriptions share one execution of each event, and nothing else.

Sockets of one visibility class with one document and one set of variables receive the
bytes one of them (the leader) produced; each other class, document or set of variables
is executed on its own (`weflux.gql.fanout`, `weflux.realtime.hub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor
from tests.fixtures.inbox import ASSIGN, Api, set_role
from tests.fixtures.live import ADDED, closed_with, inbound, listeners, until_listening
from tests.fixtures.ws import GraphQLSocket, acts_as
from weflux.db import Database
from weflux.gql import socket as socket_module
from weflux.gql.fanout import resumes
from weflux.gql.guard import operation_scope
from weflux.ids import encode_global_id
from weflux.models import Conversation, Organization, WhatsAppAccount
from weflux.realtime import hub as hub_module
from weflux.realtime.hub import Dormant, Hub, Sharing
from weflux.runtime import runtime_of

NEWCOMER = "16505559876"  # another customer: a new, unassigned conversation every member sees
ONLY_TEXT = "subscription { messageAdded { text } }"
IN_CONVERSATION = """subscription($id: ID) { messageAdded(conversationId: $id) {
  id text direction conversation { id contact { name } } } }"""


async def _subscribed(
    live: str, http: httpx.AsyncClient, actor: Actor, count: int, query: str = ADDED
) -> list[tuple[GraphQLSocket, str]]:
    """`count` sockets of `actor` (one session each), each subscribed to `query`."""
    sockets = []
    for _ in range(count):
        socket = await GraphQLSocket.connect(live, await token_for(http, actor))
        sockets.append((socket, await socket.subscribe(query)))
    return sockets


async def _added(socket: GraphQLSocket, operation: str) -> dict[str, Any]:
    frame = await socket.next(operation)
    assert frame["type"] == "next", frame
    return dict(frame["payload"]["data"]["messageAdded"])


async def _conversation(db: Database, org: Organization) -> str:
    async with db.session(org.id) as session:
        row = (await session.exec(select(Conversation))).one()
    return encode_global_id("Conversation", row.id)


async def _assign_the_conversation(
    http: httpx.AsyncClient, db: Database, org: Organization, admin: Actor, to: Actor
) -> None:
    """`admin` assigns the workspace's one conversation to `to` (no error)."""
    variables = {
        "conversationId": await _conversation(db, org),
        "assigneeId": encode_global_id("Member", to.membership.id),
    }
    assert "errors" not in await Api(http)(admin, ASSIGN, {"input": variables})


async def _nothing_more(socket: GraphQLSocket, operation: str) -> None:
    await socket.ping()  # answered after all the server sent before it
    assert not socket._pending.get(operation), socket._pending


def _groups(app: Starlette) -> int:
    hub: Hub = runtime_of(app).hub
    return len(hub._groups)


async def test_each_visibility_class_gets_exactly_what_it_may_see(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given an Admin, a Manager, the assigned Agent, another Agent and another workspace's
    Admin, several sockets each, all on the same `messageAdded` document,
    when a message arrives in the conversation assigned to the Agent,
    then the Admins, the Manager and the assigned Agent receive it, identical, and the
    other Agent and the other workspace do not: their next frame is a later message
    they may see (or, for the other workspace, nothing at all)."""
    witness = (await _subscribed(live, http, admin, 1))[0]
    await until_listening(live_app, 1)
    await inbound(http, "first")
    assert (await _added(*witness))["text"] == "first"
    await _assign_the_conversation(http, db, org, admin, agent)
    seeing = [
        *(await _subscribed(live, http, admin, 2)),
        *(await _subscribed(live, http, manager, 1)),
        *(await _subscribed(live, http, agent, 2)),
    ]
    blind = await _subscribed(live, http, other_agent, 2)
    elsewhere = await _subscribed(live, http, other_admin, 2)
    await until_listening(live_app, 10)
    assert _groups(live_app) == 4  # all of org, the agent, the other agent, the other org

    await inbound(http, "for the assigned agent")
    payloads = [await _added(*pair) for pair in (witness, *seeing)]
    assert all(p == payloads[0] for p in payloads), payloads
    assert payloads[0]["text"] == "for the assigned agent"

    await inbound(http, "a new customer", sender=NEWCOMER)
    for pair in (witness, *seeing, *blind):
        assert (await _added(*pair))["text"] == "a new customer"
    for pair in elsewhere:
        await _nothing_more(*pair)
    for socket, _ in (witness, *seeing, *blind, *elsewhere):
        await socket.close()


async def test_different_documents_and_variables_do_not_share_bytes(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given one Admin's sockets on two documents, and on one document with two different
    `conversationId` variables,
    when a message arrives in one conversation,
    then each document's frame carries exactly its own selection, and only the
    subscription of that conversation receives it."""
    token = await token_for(http, admin)
    socket = await GraphQLSocket.connect(live, token)
    full = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    await inbound(http, "first")
    assert (await _added(socket, full))["text"] == "first"
    first = await _conversation(db, org)

    other = await GraphQLSocket.connect(live, token)
    short = await other.subscribe(ONLY_TEXT)
    here = await other.subscribe(IN_CONVERSATION, {"id": first})
    there = await other.subscribe(
        IN_CONVERSATION, {"id": encode_global_id("Conversation", org.id)}
    )  # a conversation id that names nothing: never a message
    await until_listening(live_app, listeners(live_app) + 3)

    await inbound(http, "second")
    assert set(await _added(socket, full)) == {"id", "cursor", "text", "direction", "conversation"}
    assert await _added(other, short) == {"text": "second"}
    in_here = await _added(other, here)
    assert in_here["conversation"]["id"] == first
    assert set(in_here) == {"id", "text", "direction", "conversation"}
    await _nothing_more(other, there)
    await socket.close()
    await other.close()


async def test_the_group_goes_on_when_its_leader_leaves(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given three Admin sockets on one document (the first leads, two follow),
    when the leader closes,
    then the next messages reach both others, each once."""
    sockets = await _subscribed(live, http, admin, 3)
    await until_listening(live_app, 3)
    await inbound(http, "one")
    for pair in sockets:
        assert (await _added(*pair))["text"] == "one"
    await sockets[0][0].close()
    await _until_at_most(live_app, 2)
    await inbound(http, "two")
    await inbound(http, "three")
    for socket, operation in sockets[1:]:
        texts = [(await _added(socket, operation))["text"] for _ in range(2)]
        assert sorted(texts) == ["three", "two"]  # processed concurrently: any order
        await _nothing_more(socket, operation)  # no duplicate
        await socket.close()


FEED = "subscription { conversationUpdated { id lastMessage { text } } }"


async def test_feed_subscriptions_hand_over_without_a_duplicate(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given three Admin sockets on `conversationUpdated` (live, no `after`) and a first
    customer's message they all received,
    when the first socket closes and another customer writes,
    then each other socket receives the second customer's conversation once, and not the
    first's again (a feed subscription reads on from its own position: never grouped)."""
    sockets = await _subscribed(live, http, admin, 3, FEED)
    await until_listening(live_app, 3)
    await inbound(http, "one")
    for socket, operation in sockets:
        frame = await socket.next(operation)
        assert frame["payload"]["data"]["conversationUpdated"]["lastMessage"]["text"] == "one"
    await sockets[0][0].close()
    await _until_at_most(live_app, 2)
    await inbound(http, "two", sender=NEWCOMER)
    for socket, operation in sockets[1:]:
        frame = await socket.next(operation)
        assert frame["payload"]["data"]["conversationUpdated"]["lastMessage"]["text"] == "two"
        await _nothing_more(socket, operation)  # the first conversation not sent again
        await socket.close()


async def _until_at_most(app: Starlette, count: int) -> None:
    async with asyncio.timeout(5):
        while listeners(app) > count:  # noqa: ASYNC110  (state the server's task changes)
            await asyncio.sleep(0.005)


async def test_revoking_the_leaders_or_a_followers_session_closes_only_its_socket(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, agent: Actor
) -> None:
    """Given an Agent's three sessions, each with a socket on one document (one group),
    when the leader's session logs out, then a follower's,
    then each is closed with 4401 at once and the remaining one still receives."""
    tokens = [await token_for(http, agent) for _ in range(3)]
    sockets = []
    for token in tokens:
        socket = await GraphQLSocket.connect(live, token)
        sockets.append((socket, await socket.subscribe(ADDED)))
        await until_listening(live_app, len(sockets))  # in this order: the first leads
    for index in (0, 1):
        response = await http.post(
            "/auth/logout", headers={"Authorization": f"Bearer {tokens[index]}"}
        )
        assert response.status_code == 204
        assert await closed_with(sockets[index][0]) == 4401
    await inbound(http, "after the logouts")
    assert (await _added(*sockets[2]))["text"] == "after the logouts"
    await sockets[2][0].close()


def test_only_subscriptions_without_a_resume_point_are_shared() -> None:
    """Given documents passing `after` as a literal, a variable with a value, a variable
    with a default, or null (literal, absent or null variable), and garbage,
    when asked whether each resumes,
    then only those with a resume point (or unparsable) do: they are never grouped."""
    by_variable = "subscription($a: String) { messageAdded(after: $a) { id } }"
    defaulted = 'subscription($a: String = "x") { messageAdded(after: $a) { id } }'
    assert resumes('subscription { messageAdded(after: "abc") { id } }', None)
    assert resumes(by_variable, {"a": "abc"})
    assert resumes(defaulted, None)
    assert not resumes("subscription { messageAdded(after: null) { id } }", None)
    assert not resumes(by_variable, None)
    assert not resumes(by_variable, {"a": None})
    assert not resumes("subscription { messageAdded { id } }", {})
    assert resumes("subscription { messageAdded(", None)


async def test_a_listener_started_by_another_task_is_never_grouped(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given `inboxCountsUpdated`, whose workspace feed listens from a task the first
    subscription starts (and serves every subscriber of the workspace),
    when an Admin subscribes to it,
    then the feed's listener forms no group of that subscription's (it is nobody's)."""
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    operation = await socket.subscribe("subscription { inboxCountsUpdated { all } }")
    assert (await socket.next(operation))["type"] == "next"
    await until_listening(live_app, 1)
    assert _groups(live_app) == 0
    await socket.close()


def _dormant(app: Starlette) -> int:
    """How many group members wait with no operation running (`weflux.realtime.hub`)."""
    hub: Hub = runtime_of(app).hub
    return sum(listener.dormant for g in hub._groups.values() for listener in g.followers)


async def test_a_dormant_member_promoted_to_leader_gets_exactly_its_events(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given three Admin sockets on one live document: the first leads, the two others
    wait with no operation running,
    when the leader closes, then the new one, each after a message,
    then each remaining socket receives every later message exactly once, from whichever
    member leads (restarted, its operation takes the group's backlog)."""
    sockets = await _subscribed(live, http, admin, 3, ONLY_TEXT)
    await until_listening(live_app, 3)
    assert _dormant(live_app) == 2
    await inbound(http, "one")
    for pair in sockets:
        assert (await _added(*pair))["text"] == "one"
    for leaving, text in ((0, "two"), (1, "three")):
        await sockets[leaving][0].close()
        await _until_at_most(live_app, 2 - leaving)
        await inbound(http, text)
        for socket, operation in sockets[leaving + 1 :]:
            assert (await _added(socket, operation))["text"] == text
            await _nothing_more(socket, operation)
    assert _dormant(live_app) == 0
    await sockets[2][0].close()


async def test_a_dormant_member_that_completes_leaves_its_group(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given three Admin sockets on one live document (two of them dormant members),
    when the second completes its subscription, then subscribes again with the same id,
    then it receives nothing for the completed one, the others go on, and the new
    subscription (under the same id) receives the next message once."""
    sockets = await _subscribed(live, http, admin, 3, ONLY_TEXT)
    await until_listening(live_app, 3)
    socket, operation = sockets[1]
    await socket.connection.send(json.dumps({"id": operation, "type": "complete"}))
    await _until_at_most(live_app, 2)
    await inbound(http, "without it")
    for pair in (sockets[0], sockets[2]):
        assert (await _added(*pair))["text"] == "without it"
    await _nothing_more(socket, operation)
    frame = {"id": operation, "type": "subscribe", "payload": {"query": ONLY_TEXT}}
    await socket.connection.send(json.dumps(frame))
    await until_listening(live_app, 3)
    await inbound(http, "with it again")
    for pair in sockets:
        assert (await _added(*pair))["text"] == "with it again"
        await _nothing_more(*pair)
    for pair in sockets:
        await pair[0].close()


async def test_a_dormant_member_whose_role_narrows_restarts_with_its_new_scope(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
) -> None:
    """Given an Admin leading and a Manager following (dormant) on one live document, and
    a conversation assigned to an Agent,
    when the Manager is made an Agent and messages arrive in that conversation and a new one,
    then the Manager's operation restarts on its own with the Agent's scope: it receives
    the new customer's message only, the Admin both."""
    [lead] = await _subscribed(live, http, admin, 1, ONLY_TEXT)
    await until_listening(live_app, 1)
    await inbound(http, "first")
    assert (await _added(*lead))["text"] == "first"
    [follower] = await _subscribed(live, http, manager, 1, ONLY_TEXT)
    await until_listening(live_app, 2)
    assert _dormant(live_app) == 1
    await _assign_the_conversation(http, db, org, admin, agent)
    await set_role(Api(http), admin, manager, "AGENT")
    await acts_as(follower[0], "AGENT")
    await inbound(http, "hidden from agents but one")
    await inbound(http, "a new customer", sender=NEWCOMER)
    texts = [(await _added(*lead))["text"] for _ in range(2)]
    assert sorted(texts) == ["a new customer", "hidden from agents but one"]
    assert (await _added(*follower))["text"] == "a new customer"
    await _nothing_more(*follower)
    for pair in (lead, follower):
        await pair[0].close()


def _subscribe_frames(query: str) -> list[dict[str, Any]]:
    """The decoded `subscribe` frames of `query` this process still holds (after a
    collection). Of `query` only: other modules' parameters are frames too, which pytest
    keeps for the run (tests/gql/test_hardening.py's malformed ones)."""
    gc.collect()
    dicts = [o for o in gc.get_objects() if type(o) is dict]
    return [
        o
        for o in dicts
        if isinstance(kind := o.get("type"), str)
        and kind == "subscribe"
        and isinstance(payload := o.get("payload"), dict)
        and isinstance(text := payload.get("query"), str)
        and text == query
    ]


async def test_an_idle_dormant_member_holds_no_task_and_no_frame(
    live: str, live_app: Starlette, http: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given three Admin sockets on one live document (the first leads, two dormant),
    when they wait for events,
    then no member's sharing holds a task but the leader's running one, no subscribe frame
    is held (each operation took what it needs), all listeners share one set of event
    names, and each member's frames go to its server's own `send` (no queue of its own);
    and a message still reaches each of them."""
    sockets = await _subscribed(live, http, admin, 3, ONLY_TEXT)
    await until_listening(live_app, 3)
    assert _dormant(live_app) == 2
    hub: Hub = runtime_of(live_app).hub
    [group] = hub._groups.values()
    members = [group.leader, *group.followers]
    shares = [
        share
        for listener in members
        for share in (listener.member.handler._shares or {}).values()
        if share.listener is listener
    ]
    assert len(shares) == 3
    assert shares[0].task is not None
    assert not shares[0].task.done()
    assert [share.task for share in shares[1:]] == [None, None]
    assert _subscribe_frames(ONLY_TEXT) == []
    assert len({id(listener.events) for listener in members}) == 1
    assert all(listener.member._server() is not None for listener in members)
    await inbound(http, "still live")
    for pair in sockets:
        assert (await _added(*pair))["text"] == "still live"
    for pair in sockets:
        await pair[0].close()


async def test_a_member_woken_while_its_dormant_task_unwinds_keeps_its_restarted_task(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    channel: WhatsAppAccount,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given an Admin leading a live document and a second socket joining it as a dormant
    member, whose operation is restarted (woken) while the task that raised `Dormant`
    still unwinds, suspended on the way,
    when that task ends,
    then the operation keeps its restarted task (a dormant task lets the operation's task
    go only while it is still that task), and completing the operation ends it."""
    woken: list[tuple[asyncio.Task[Any] | None, Sharing]] = []

    @contextlib.asynccontextmanager
    async def suspended_after_dormant(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async with operation_scope(*args, **kwargs) as scope:
                yield scope
        except Dormant:
            share = hub_module._sharing.get()
            if not woken and share is not None and share.listener is not None:
                woken.append((asyncio.current_task(), share))
                hub_module._wake(share.listener)  # as another task's event would
                await asyncio.sleep(0)  # the suspension between `Dormant` and its `except`
            raise

    monkeypatch.setattr(socket_module, "operation_scope", suspended_after_dormant)
    sockets = await _subscribed(live, http, admin, 2, ONLY_TEXT)
    async with asyncio.timeout(30):
        while not woken:  # noqa: ASYNC110  (state the server's task changes)
            await asyncio.sleep(0.005)
    [(unwinding, share)] = woken
    assert unwinding is not None
    await asyncio.wait([unwinding], timeout=30)
    assert unwinding.done()
    assert share.listener is not None
    socket, operation_id = sockets[1]
    restarted = share.listener.member.handler.operations[operation_id].task
    assert restarted is not None
    assert restarted is not unwinding
    assert not restarted.done(), "the restarted task was replaced by a finished one"
    await socket.connection.send(json.dumps({"id": operation_id, "type": "complete"}))
    await asyncio.wait([restarted], timeout=30)
    assert restarted.done()
    for pair in sockets:
        await pair[0].close()
