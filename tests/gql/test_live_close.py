"""A subscription closed while a value is out returns its connection at once
(`weflux.gql.live`).

A replayed row is delivered inside an event unit of the inner generator that read it
(`_catch_up`, `_replay`): the unit stays open while the frame is built, so its fields load
through it. When the client goes away (or the server stops) the transport closes the
subscription's generator there; the inner generators must close with it, in the same
task. Left to the garbage collector, their units kept a connection checked out past the
app's shutdown (SQLAlchemy's "non-checked-in connection" warning, seen in the restart
tests of test_update_feed.py)."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from typing import Any

import pytest
from starlette.applications import Starlette

from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.live import socket_context
from weflux.db import Database
from weflux.gql.guard import operation_scope
from weflux.gql.schema import build_schema
from weflux.models import MessageStatus, Organization
from weflux.pagination import encode_cursor, encode_update_cursor
from weflux.runtime import runtime_of

REPLAYS = {
    "conversationUpdated": "subscription($after: String) { conversationUpdated(after: $after) "
    "{ id unreadCount contact { name } } }",
    "messageUpdated": "subscription($after: String) { messageUpdated(after: $after) "
    "{ id status conversation { id } } }",
    "messageAdded": "subscription($after: String) { messageAdded(after: $after) "
    "{ id text conversation { id } } }",
}


@pytest.mark.parametrize("field", sorted(REPLAYS))
async def test_a_subscription_closed_mid_replay_returns_its_connection_at_once(
    dialect: str, app: Starlette, db: Database, org: Organization, admin: Actor, field: str
) -> None:
    """Given a conversation with a message whose status changed,
    when an Admin's subscription replays from the start and is closed (as the transport
    does when the socket goes away) while its first value is out,
    then no connection of the app's pool is checked out any more, at once, and the
    garbage collector finds none to clean up."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session, org_id=org.id)
        message = await create_message(session, conversation, status=MessageStatus.RECEIVED)
    async with db.session(org.id) as session:
        message.status = MessageStatus.READ  # a change after its creation: messageUpdated's
        session.add(message)
    pool: Any = runtime_of(app).db.engine.pool
    context = socket_context(app, admin)
    schema = build_schema()
    after = encode_cursor(uuid.UUID(int=0)) if field == "messageAdded" else encode_update_cursor(0)
    async with operation_scope(None, 30, open_unit=context.operation_unit):
        stream: Any = await schema.subscribe(
            REPLAYS[field], variable_values={"after": after}, context_value=context
        )
        async with asyncio.timeout(10):
            first = await anext(stream)
        assert first.errors is None, first.errors
        assert first.data[field]["id"]

        await stream.aclose()

        assert pool.checkedout() == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if "non-checked-in" in str(w.message)] == []
