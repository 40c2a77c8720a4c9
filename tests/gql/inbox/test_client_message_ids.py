"""`clientMessageId`: a retry answers the first message; any other reuse is CONFLICT."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import select

from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import Api, codes, gid
from weflux.db import Database
from weflux.models import Message, Organization, utcnow
from weflux.services import outbound

SEND = """mutation($input: SendMessageInput!) {
  sendMessage(input: $input) { id text status } }"""
TEMPLATE = """mutation($input: SendTemplateMessageInput!) {
  sendTemplateMessage(input: $input) { id text status } }"""


@pytest.fixture
async def conversations(db: Database, org: Organization) -> tuple[str, str]:
    """Two conversations whose contacts wrote a moment ago (replies allowed)."""
    async with db.session(org.id) as session:
        first = await create_conversation(session, last_inbound_at=utcnow())
        second = await create_conversation(session, last_inbound_at=utcnow())
    return gid("Conversation", first.id), gid("Conversation", second.id)


@pytest.fixture
def race(monkeypatch: pytest.MonkeyPatch, dialect: str) -> None:
    """Two racing sends both look for their clientMessageId before either inserts.

    On PostgreSQL the look-up of each request waits for the other's; on SQLite the
    write lock taken at the start of each request's transaction serialises them anyway.
    """
    if dialect != "postgresql":
        return
    barrier = asyncio.Barrier(2)
    looked: set[asyncio.Task[Any] | None] = set()
    first_look = outbound._existing

    async def together(session: Any, wanted: Message) -> Message | None:
        task = asyncio.current_task()
        if task not in looked:
            looked.add(task)
            await asyncio.wait_for(barrier.wait(), 10)
        return await first_look(session, wanted)

    monkeypatch.setattr(outbound, "_existing", together)


def _text(conversation_id: str, text: str, client_id: str = "client-1") -> dict[str, Any]:
    return {
        "input": {"conversationId": conversation_id, "text": text, "clientMessageId": client_id}
    }


def _template(
    conversation_id: str, parameters: list[str], client_id: str = "client-1"
) -> dict[str, Any]:
    return {
        "input": {
            "conversationId": conversation_id,
            "templateName": "order_update",
            "languageCode": "en_US",
            "bodyParameters": parameters,
            "clientMessageId": client_id,
        }
    }


async def _stored(db: Database, org: Organization) -> list[Message]:
    async with db.session(org.id) as session:
        return list((await session.exec(select(Message))).all())


def _conflict_on_client_message_id(body: dict[str, Any]) -> None:
    assert codes(body) == ["CONFLICT"], body
    assert body["errors"][0]["extensions"]["details"][0]["field"] == "clientMessageId"


async def test_a_retry_with_the_same_text_answers_the_first_message(
    api: Api, db: Database, org: Organization, agent: Actor, conversations: tuple[str, str]
) -> None:
    """Given a sent reply, when it is sent again with its clientMessageId and the same
    text, then the first message answers and nothing more is queued."""
    first = await api(agent, SEND, _text(conversations[0], "On its way"))
    again = await api(agent, SEND, _text(conversations[0], "On its way"))
    assert again["data"]["sendMessage"] == first["data"]["sendMessage"]
    assert len(await _stored(db, org)) == 1


async def test_reusing_a_client_message_id_for_something_else_is_a_conflict(
    api: Api, db: Database, org: Organization, manager: Actor, conversations: tuple[str, str]
) -> None:
    """Given a reply sent with a clientMessageId, when the id comes again with another
    text, another conversation or as a template, then CONFLICT and nothing is queued."""
    here, there = conversations
    sent = await api(manager, SEND, _text(here, "On its way"))
    assert "errors" not in sent, sent
    for query, variables in (
        (SEND, _text(here, "On its way!")),
        (SEND, _text(there, "On its way")),
        (TEMPLATE, _template(here, ["On its way"])),
    ):
        _conflict_on_client_message_id(await api(manager, query, variables))
    assert [m.text for m in await _stored(db, org)] == ["On its way"]


async def test_a_template_retry_must_repeat_its_parameters(
    api: Api, db: Database, org: Organization, admin: Actor, conversations: tuple[str, str]
) -> None:
    """Given a template sent with a clientMessageId, when it is retried with the same
    parameters, then the first message answers; with others, or as a text, CONFLICT."""
    here, _ = conversations
    first = await api(admin, TEMPLATE, _template(here, ["Sheena", "#1042"]))
    again = await api(admin, TEMPLATE, _template(here, ["Sheena", "#1042"]))
    assert again["data"]["sendTemplateMessage"] == first["data"]["sendTemplateMessage"]
    _conflict_on_client_message_id(await api(admin, TEMPLATE, _template(here, ["Sheena", "#1043"])))
    text = first["data"]["sendTemplateMessage"]["text"]
    _conflict_on_client_message_id(await api(admin, SEND, _text(here, text)))
    assert len(await _stored(db, org)) == 1


@pytest.mark.usefixtures("race")
async def test_two_concurrent_sends_with_one_client_message_id_queue_one_message(
    api: Api, db: Database, org: Organization, admin: Actor, conversations: tuple[str, str]
) -> None:
    """Given two tabs sending the same reply with one clientMessageId at once, then both
    answer the same message and one is queued."""
    await api.token(admin)  # log in first: only the sends race
    answers = await asyncio.gather(
        *(api(admin, SEND, _text(conversations[0], "Twice?", "race-1")) for _ in range(2))
    )
    assert [codes(body) for body in answers] == [[], []], answers
    assert answers[0]["data"] == answers[1]["data"]
    assert len(await _stored(db, org)) == 1


@pytest.mark.usefixtures("race")
async def test_two_concurrent_different_sends_with_one_client_message_id_conflict(
    api: Api, db: Database, org: Organization, admin: Actor, conversations: tuple[str, str]
) -> None:
    """Given two different replies sent at once under one clientMessageId, then one is
    queued and the other answers CONFLICT."""
    await api.token(admin)
    answers = await asyncio.gather(
        api(admin, SEND, _text(conversations[0], "first", "race-2")),
        api(admin, SEND, _text(conversations[0], "second", "race-2")),
    )
    outcomes = sorted(codes(body) for body in answers)
    assert outcomes == [[], ["CONFLICT"]], answers
    (stored,) = await _stored(db, org)
    winner = next(body for body in answers if not codes(body))
    assert stored.text == winner["data"]["sendMessage"]["text"]
