"""Which operation of a document runs: the GraphQL spec's GetOperation, over HTTP and the socket.

A document of several operations runs the one `operationName` names; without a name, or
with a name that none of them has, nothing runs and the request is refused
GRAPHQL_VALIDATION_FAILED (200 over HTTP, an `error` frame over the socket).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.api import error_codes, token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.factories import Actor
from tests.fixtures.inbox import status_of
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Conversation, ConversationStatus

# The operation's choice does not depend on the database: SQLite is enough.
sqlite_only = pytest.mark.parametrize("dialect", ["sqlite"])

# A mutation first: Strawberry ran a document's first operation when none was named.
CLOSE_THEN_LOOK = """
mutation Close($id: ID!) {
  updateConversationStatus(input: {conversationId: $id, status: RESOLVED}) { id } }
query Look { viewer { id } }
"""
SEVERAL = "Must provide operation name if query contains multiple operations."
UNKNOWN = 'Unknown operation named "Elsewhere".'


def variables(conversation: Conversation) -> dict[str, Any]:
    return {"id": encode_global_id("Conversation", conversation.id)}


async def post(client: httpx.AsyncClient, token: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/graphql", json=body, headers={"Authorization": f"Bearer {token}"})


@sqlite_only
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": CLOSE_THEN_LOOK}, SEVERAL),
        ({"query": CLOSE_THEN_LOOK, "operationName": None}, SEVERAL),
        ({"query": CLOSE_THEN_LOOK, "operationName": "Elsewhere"}, UNKNOWN),
        ({"query": "query Look { viewer { id } }", "operationName": "Elsewhere"}, UNKNOWN),
        # A subscription first is no longer the operation judged (400 over HTTP)
        ({"query": "subscription S { conversationUpdated { id } } " + CLOSE_THEN_LOOK}, SEVERAL),
    ],
    ids=[
        "no-name",
        "null-name",
        "unknown-name",
        "one-operation-unknown-name",
        "subscription-first",
    ],
)
async def test_a_document_naming_no_operation_to_run_is_refused_over_http(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    conversation: Conversation,
    body: dict[str, Any],
    message: str,
) -> None:
    """Given a document whose operation to run is not determined (several operations and
    no `operationName`, or an `operationName` naming none of them),
    when it is posted,
    then it is a request error coded like an invalid document, nothing ran or was charged."""
    token = await token_for(client, admin)
    response = await post(client, token, {**body, "variables": variables(conversation)})
    assert response.status_code == 200
    assert response.json()["data"] is None
    assert error_codes(response) == ["GRAPHQL_VALIDATION_FAILED"]
    assert [error["message"] for error in response.json()["errors"]] == [message]
    assert response.json()["extensions"]["cost"]["requested"] == 0
    assert await status_of(db, conversation) is ConversationStatus.OPEN


@sqlite_only
async def test_the_named_operation_runs_and_is_the_one_costed_over_http(
    client: httpx.AsyncClient, db: Database, admin: Actor, conversation: Conversation
) -> None:
    token = await token_for(client, admin)
    body = {"query": CLOSE_THEN_LOOK, "variables": variables(conversation)}
    # When the query is named: it runs, costed as a query (the mutation would cost more)
    looked = await post(client, token, {**body, "operationName": "Look"})
    assert looked.status_code == 200, looked.text
    assert set(looked.json()["data"]) == {"viewer"}
    assert looked.json()["extensions"]["cost"]["requested"] == 1
    assert await status_of(db, conversation) is ConversationStatus.OPEN
    # When the mutation is named: it runs
    closed = await post(client, token, {**body, "operationName": "Close"})
    assert set(closed.json()["data"]) == {"updateConversationStatus"}, closed.text
    assert closed.json()["extensions"]["cost"]["requested"] > 1
    assert await status_of(db, conversation) is ConversationStatus.RESOLVED


@sqlite_only
async def test_over_the_socket_the_operation_is_chosen_the_same_way(
    live: str, db: Database, admin: Actor, conversation: Conversation
) -> None:
    """Given an acknowledged socket,
    when it subscribes with several operations and no name, or with an unknown name,
    then each is answered an `error` frame coded GRAPHQL_VALIDATION_FAILED, nothing ran,
    and the socket stays open; a named operation runs."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=live) as http:
        token = await token_for(http, admin)
    socket = await GraphQLSocket.connect(live, token)
    try:
        for name, message in ((None, SEVERAL), ("Elsewhere", UNKNOWN)):
            operation = await socket.subscribe(
                CLOSE_THEN_LOOK, variables(conversation), operation_name=name
            )
            frame = await socket.next(operation)
            assert frame["type"] == "error", frame
            assert [error["message"] for error in frame["payload"]] == [message]
            assert [error["extensions"]["code"] for error in frame["payload"]] == [
                "GRAPHQL_VALIDATION_FAILED"
            ]
        await socket.ping()  # still open
        assert await status_of(db, conversation) is ConversationStatus.OPEN
        operation = await socket.subscribe(
            CLOSE_THEN_LOOK, variables(conversation), operation_name="Look"
        )
        frame = await socket.next(operation)
        assert frame["type"] == "next", frame
        assert set(frame["payload"]["data"]) == {"viewer"}
        assert await status_of(db, conversation) is ConversationStatus.OPEN
    finally:
        await socket.close()
