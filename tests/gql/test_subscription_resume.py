"""Resuming `messageAdded(after:)` after a long absence, over a real WebSocket client."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor, create_message
from tests.fixtures.live import SECRET
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.models import Conversation, Message, Organization, WhatsAppAccount
from weflux.pagination import encode_cursor

MISSED = 1_000
RESUME = """subscription($after: String) { messageAdded(after: $after) {
  id cursor text conversation { id contact { name } } sentBy { id } } }"""


async def _inbound(http: httpx.AsyncClient, text: str) -> None:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(body=text)],
                contacts=[wh.contact(wa_id=wh.CUSTOMER_WA_ID, name=wh.CUSTOMER_NAME)],
            )
        )
    )
    response = await http.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": wh.sign(body, SECRET), "Content-Type": "application/json"},
    )
    assert response.status_code == 200


async def _conversation(db: Database, org: Organization) -> Conversation:
    for _ in range(100):  # processing runs just after Meta's 200
        async with db.session(org.id) as session:
            conversation = (await session.exec(select(Conversation))).first()
        if conversation is not None:
            return conversation
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook was not processed")


async def test_a_thousand_missed_messages_replay_in_order_then_live_ones_follow(
    live: str,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given a client that saw one message and then missed 1,000 (ten replay pages),
    when it resubscribes with that message's cursor,
    then it receives all 1,000 in order, each once, then a message that arrived during the
    replay (once, though both the replay and the live stream may see it), then live ones."""
    await _inbound(http, "seen before the break")
    conversation = await _conversation(db, org)
    async with db.session(org.id) as session:
        seen = (await session.exec(select(Message))).one()
        cursor = encode_cursor(seen.id)
        for n in range(MISSED):
            await create_message(session, conversation, text=f"missed {n}")
    async with db.session(org.id) as session:
        expected = [
            str(row)
            for row in (
                await session.exec(
                    select(Message.text).where(col(Message.id) > seen.id).order_by(col(Message.id))
                )
            ).all()
        ]
    assert expected == [f"missed {n}" for n in range(MISSED)]

    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    operation = await socket.subscribe(RESUME, {"after": cursor})
    await _inbound(http, "during the replay")
    expected.append("during the replay")
    received: list[dict[str, Any]] = []
    for _ in range(MISSED + 1):
        frame = await socket.next(operation, timeout=30)
        assert frame["type"] == "next", frame
        assert "errors" not in frame["payload"], frame
        received.append(frame["payload"]["data"]["messageAdded"])
    assert [m["text"] for m in received] == expected
    assert len({m["id"] for m in received}) == MISSED + 1
    assert all(m["conversation"]["contact"]["name"] == wh.CUSTOMER_NAME for m in received)

    await _inbound(http, "live after the replay")
    live_frame = await socket.next(operation)
    assert live_frame["payload"]["data"]["messageAdded"]["text"] == "live after the replay"
    await _inbound(http, "and the one after")  # nothing came twice in between
    next_frame = await socket.next(operation)
    assert next_frame["payload"]["data"]["messageAdded"]["text"] == "and the one after"
    await socket.close()
