"""Queries and mutations over the WebSocket: they work, and are limited like HTTP ones.

A real uvicorn serves the app; an independent `websockets` client speaks
graphql-transport-ws to it, as a frontend sending every operation over the socket does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.inbox import EndlessStatusChange, status_of
from tests.fixtures.live import serve_settings, until_listening
from tests.fixtures.throttle import freeze_cost_budgets
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.errors import Conflict
from weflux.ids import encode_global_id
from weflux.models import Conversation, ConversationStatus
from weflux.runtime import runtime_of
from weflux.services import conversations as conversation_service

SET_STATUS = """mutation($id: ID!, $status: ConversationStatus!) {
  updateConversationStatus(input: {conversationId: $id, status: $status}) { id status } }"""
UPDATED = "subscription { conversationUpdated { id status } }"
ATTACK = (
    "{ conversations(first:50){edges{node{messages(last:50){edges{node{conversation"
    "{messages(last:50){edges{cursor}}}}}}}}}}"
)

Serve = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def serve(database_urls: DatabaseUrls, tmp_path: Path) -> Serve:
    """`async with serve(**settings) as base_url:` the app under uvicorn, on the test's DB."""

    @asynccontextmanager
    async def server(**overrides: Any) -> AsyncIterator[str]:
        async with serve_settings(database_urls, tmp_path, **overrides) as (_app, base_url):
            yield base_url

    return server


async def connect(base_url: str, actor: Actor) -> GraphQLSocket:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as http:
        token = await token_for(http, actor)
    return await GraphQLSocket.connect(base_url, token)


def set_status(conversation: Conversation, status: str) -> dict[str, Any]:
    return {"id": encode_global_id("Conversation", conversation.id), "status": status}


async def result(socket: GraphQLSocket, operation: str) -> dict[str, Any]:
    """The single `next` of a query or mutation, then its `complete`."""
    frame = await socket.next(operation)
    assert frame["type"] == "next", frame
    assert (await socket.next(operation))["type"] == "complete"
    payload: dict[str, Any] = frame["payload"]
    return payload


def codes_of(frame: dict[str, Any]) -> list[str]:
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
    return [error["extensions"]["code"] for error in errors]


async def test_queries_and_mutations_over_the_socket_commit_and_publish(
    live: str,
    live_app: Starlette,
    admin: Actor,
    manager: Actor,
    db: Database,
    conversation: Conversation,
) -> None:
    watcher, socket = await connect(live, manager), await connect(live, admin)
    try:
        watching = await watcher.subscribe(UPDATED)
        await until_listening(live_app, 1)
        # Given a frontend that sends everything over the socket: a query works
        viewer = await result(socket, await socket.subscribe("{ viewer { role } }"))
        assert viewer["data"] == {"viewer": {"role": "ADMIN"}}
        assert viewer["extensions"]["cost"]["requested"] == 1
        # When it sends a mutation
        changed = await result(
            socket,
            await socket.subscribe(SET_STATUS, set_status(conversation, "RESOLVED")),
        )
        # Then it answers, is committed, and its event reaches other sockets
        assert changed["data"]["updateConversationStatus"]["status"] == "RESOLVED"
        assert changed["extensions"]["cost"]["requested"] == 10
        assert await status_of(db, conversation) is ConversationStatus.RESOLVED
        event = await watcher.next(watching)
        assert event["payload"]["data"]["conversationUpdated"]["status"] == "RESOLVED"
    finally:
        await socket.close()
        await watcher.close()


async def test_a_failing_mutation_over_the_socket_is_rolled_back_and_publishes_nothing(
    live: str,
    live_app: Starlette,
    admin: Actor,
    manager: Actor,
    db: Database,
    conversation: Conversation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a status change that writes, then fails with a coded error
    real = conversation_service.update_status

    async def conflicting(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise Conflict("Changed meanwhile")

    watcher, socket = await connect(live, manager), await connect(live, admin)
    try:
        watching = await watcher.subscribe(UPDATED)
        await until_listening(live_app, 1)
        monkeypatch.setattr(conversation_service, "update_status", conflicting)
        failed = await result(
            socket, await socket.subscribe(SET_STATUS, set_status(conversation, "RESOLVED"))
        )
        assert failed["data"] is None
        assert [e["extensions"]["code"] for e in failed["errors"]] == ["CONFLICT"]
        # Then nothing of it was kept
        assert await status_of(db, conversation) is ConversationStatus.OPEN
        # And the first event the watcher hears is of the next change, not of this one
        monkeypatch.setattr(conversation_service, "update_status", real)
        await result(
            socket, await socket.subscribe(SET_STATUS, set_status(conversation, "PENDING"))
        )
        event = await watcher.next(watching)
        assert event["payload"]["data"]["conversationUpdated"]["status"] == "PENDING"
    finally:
        await socket.close()
        await watcher.close()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_socket_operations_count_against_the_request_limits(
    serve: Serve, admin: Actor
) -> None:
    # Given a workspace allowed 5 operations an hour, HTTP and WebSocket together
    async with (
        serve(rate_limit_graphql_workspace="5/hour") as base_url,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as http,
    ):
        token = await token_for(http, admin)
        assert (await gql(http, token, "{ viewer { id } }")).status_code == 200
        socket = await GraphQLSocket.connect(base_url, token)
        try:
            # When one socket sends 6 more
            frames = []
            for _ in range(6):
                operation = await socket.subscribe("{ viewer { id } }")
                frames.append(await socket.next(operation))
                if frames[-1]["type"] == "next":
                    assert (await socket.next(operation))["type"] == "complete"
            # Then 4 run, and the others are refused RATE_LIMITED, saying how long to wait
            assert [frame["type"] for frame in frames] == ["next"] * 4 + ["error"] * 2
            refused = frames[-1]["payload"][0]["extensions"]
            assert refused["code"] == "RATE_LIMITED"
            assert 1 <= refused["retryAfter"] <= 3600
            # And HTTP is refused too: one counter
            assert (await gql(http, token, "{ viewer { id } }")).status_code == 429
        finally:
            await socket.close()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_socket_operations_are_costed_and_charged_like_http_ones(
    serve: Serve, admin: Actor, conversation: Conversation, monkeypatch: pytest.MonkeyPatch
) -> None:
    freeze_cost_budgets(monkeypatch)  # the exact wait below: nothing refills meanwhile
    budgets = {"graphql_max_nodes": 100, "rate_limit_graphql_cost_member": "150:1/minute"}
    async with serve(**budgets) as base_url:
        socket = await connect(base_url, admin)
        try:
            # The query, and a subscription whose every event would be as large,
            # are refused before they run
            for document in (
                ATTACK,
                "subscription { conversationUpdated { messages(last: 100) { edges { node {"
                " conversation { messages(last: 10) { edges { cursor } } } } } } } }",
            ):
                refused = await socket.next(await socket.subscribe(document))
                assert refused["type"] == "error", refused
                assert codes_of(refused) == ["QUERY_TOO_COMPLEX"]
            # A page of 100 is charged 101 of the member's 150 points
            page = "{ conversations(first: 100) { edges { cursor } } }"
            charged = await result(socket, await socket.subscribe(page))
            assert charged["extensions"]["cost"]["requested"] == 101
            assert charged["extensions"]["cost"]["remaining"] == 49
            # So another is refused: the budget is spent
            spent = await socket.next(await socket.subscribe(page))
            assert codes_of(spent) == ["RATE_LIMITED"]
            assert spent["payload"][0]["extensions"]["retryAfter"] == (101 - 49) * 60
            # And a subscription is charged when it starts: 61 points do not fit in 49
            costly = (
                "subscription { conversationUpdated { messages(last: 60) { edges { cursor } } } }"
            )
            assert codes_of(await socket.next(await socket.subscribe(costly))) == ["RATE_LIMITED"]
        finally:
            await socket.close()


async def test_a_socket_operation_past_its_deadline_is_cancelled_and_rolled_back(
    admin: Actor,
    db: Database,
    conversation: Conversation,
    database_urls: DatabaseUrls,
    tmp_path: Path,
    endless_status_change: EndlessStatusChange,
) -> None:
    # Given a status change that, once written, runs a statement that never ends
    async with serve_settings(database_urls, tmp_path, graphql_timeout=1) as (app, base_url):
        socket = await connect(base_url, admin)
        try:
            # When it is sent over the socket
            operation = await socket.subscribe(SET_STATUS, set_status(conversation, "RESOLVED"))
            # Then it is answered TIMEOUT at its deadline, and completed
            frame = await socket.next(operation, timeout=30)
            assert frame["type"] == "next", frame
            assert codes_of(frame) == ["TIMEOUT"]
            assert frame["payload"]["data"] is None
            assert (await socket.next(operation))["type"] == "complete"
            # And nothing of it was kept; the socket and the database go on
            assert await status_of(db, conversation) is ConversationStatus.OPEN
            endless_status_change.end()
            # (the deadline under test is past: a loaded machine may take over 1 s for the
            # next operation, which would then time out too)
            runtime_of(app).settings.graphql_timeout = timedelta(seconds=30)
            again = await result(
                socket, await socket.subscribe(SET_STATUS, set_status(conversation, "RESOLVED"))
            )
            assert again["data"]["updateConversationStatus"]["status"] == "RESOLVED"
        finally:
            await socket.close()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_21st_operation_in_flight_on_one_socket_is_refused_and_the_socket_stays(
    serve: Serve, admin: Actor
) -> None:
    """Given a socket with 20 live subscriptions (docs/realtime.md: at most 20 in flight)
    When a 21st operation is sent
    Then it alone gets a coded `error` frame (RATE_LIMITED with the limit), and the socket
    and the 20 stay open; once one completes, a new operation runs."""
    async with serve() as base_url:
        socket = await connect(base_url, admin)
        try:
            live = [await socket.subscribe("subscription { noteAdded { id } }") for _ in range(20)]
            await socket.ping()  # the 20 are running: nothing was refused so far
            refused = await socket.next(await socket.subscribe("{ viewer { id } }"))
            assert refused["type"] == "error", refused
            assert refused["payload"] == [
                {
                    "message": "At most 20 operations may run at once on one socket: "
                    "complete one first",
                    "extensions": {"code": "RATE_LIMITED", "limit": 20},
                }
            ]
            await socket.ping()
            assert all(not socket._pending.get(operation) for operation in live)
            await socket.complete(live.pop())
            await socket.ping()
            answer = await socket.next(await socket.subscribe("{ viewer { id } }"))
            assert answer["type"] == "next", answer
        finally:
            await socket.close()
