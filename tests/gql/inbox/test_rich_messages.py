"""Structured content as an inbox reads it: locations, contact cards, choices, reactions
attached to their message, replies linked to theirs. Real-shaped webhooks in, GraphQL out."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.inbound import keyed_number, post_body, receive
from tests.fixtures.inbox import Api, workspace
from tests.fixtures.outbound import all_messages, record_events
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import decode_global_id
from weflux.models import Conversation, Organization, WhatsAppAccount
from weflux.runtime import runtime_of

HISTORY = """query { conversations(first: 1) { edges { node { messages(last: 20) { edges { node {
  id type text waMessageId
  location { latitude longitude name address }
  contacts { name firstName lastName organization phones { phone waId type } emails { email } }
  interactiveReply { kind id title description }
  reactions { emoji fromContact member { id } createdAt }
  replyTo { id text waMessageId }
} } } } } } }"""

PYWA_PHONE_NUMBER_ID = "1122334455667"
PYWA_WABA_ID = "1234567890987654321"


def _reference(name: str, key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((wh.REFERENCE_BODIES / name).read_text())
    return body[key] if key else body


def _renamed(body: dict[str, Any]) -> dict[str, Any]:
    """The body with a fresh wamid (pywa's examples all share one)."""
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = wh.new_wamid()
    return body


async def _history(api: Api, actor: Actor) -> list[dict[str, Any]]:
    body = await api(actor, HISTORY)
    assert "errors" not in body, body
    edges = body["data"]["conversations"]["edges"]
    return [
        edge["node"] for conversation in edges for edge in conversation["node"]["messages"]["edges"]
    ]


def _by_wamid(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {message["waMessageId"]: message for message in history}


async def test_locations_and_contact_cards_are_typed(
    client: httpx.AsyncClient, api: Api, db: Database, settings: Settings, admin: Actor
) -> None:
    """Given pywa's real location (a chosen place, a bare pin) and contacts webhooks
    When the inbox reads the history
    Then a location has its coordinates, name and address, and the cards their names and
    phones; other types have neither."""
    account = await keyed_number(
        db,
        settings,
        admin.org_id,
        phone_number_id=PYWA_PHONE_NUMBER_ID,
        business_account_id=PYWA_WABA_ID,
    )
    for key in ("chosen_location", "current_location", "contacts", "text"):
        await post_body(client, account, _renamed(_reference("pywa__message.json", key)))

    messages = await _history(api, admin)
    history = {message["type"]: message for message in messages}
    chosen, pin = (m for m in messages if m["type"] == "LOCATION")
    assert chosen["location"] == {
        "latitude": 37.4611978,
        "longitude": -122.2164385,
        "name": "Facebook HQ",
        "address": "1 Hacker Way, Menlo Park, CA 94025",
    }
    assert pin["location"] == {
        "latitude": 12.25089,
        "longitude": 43.90539,
        "name": None,
        "address": None,
    }
    cards = history["CONTACTS"]["contacts"]
    assert [card["name"] for card in cards] == ["Chandler Bing", "Monica", "Rachel Green"]
    assert cards[0] == {
        "name": "Chandler Bing",
        "firstName": "Chandler",
        "lastName": "Bing",
        "organization": None,
        "phones": [{"phone": "+1 555-555-5555", "waId": "972987654321", "type": "CELL"}],
        "emails": [],
    }
    text = history["TEXT"]
    assert (text["location"], text["contacts"], text["interactiveReply"]) == (None, None, None)


async def test_button_list_and_quick_replies_are_typed(
    client: httpx.AsyncClient, api: Api, number: WhatsAppAccount, admin: Actor
) -> None:
    """Given Meta's real button_reply webhook, a list reply and a template's quick reply
    When the inbox reads the history
    Then each has its kind, id, title and (for a list row) description."""
    await post_body(client, number, _reference("meta__inbound_interactive_button_reply.json"))
    await receive(
        client,
        number,
        wh.list_reply_message(row_id="slot-2", title="Tuesday", description="9:00 to 12:00"),
        wh.template_button_message(text="Stop promotions", payload="STOP_PROMOTIONS"),
    )

    choices = [m["interactiveReply"] for m in await _history(api, admin)]
    assert choices == [
        {"kind": "BUTTON_REPLY", "id": "cancel-button", "title": "Cancel", "description": None},
        {"kind": "LIST_REPLY", "id": "slot-2", "title": "Tuesday", "description": "9:00 to 12:00"},
        {
            "kind": "QUICK_REPLY",
            "id": "STOP_PROMOTIONS",
            "title": "Stop promotions",
            "description": None,
        },
    ]


async def test_a_reaction_attaches_replaces_and_is_removed(
    client: httpx.AsyncClient,
    app: Any,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given a customer's message
    When they react, change their emoji, then remove it (pywa's empty and missing emoji)
    Then the message shows one reaction, then the new one, then none; no reaction is a
    message of its own; each change announces the message (messageUpdated)."""
    target = wh.new_wamid()
    await receive(client, number, wh.text_message(target, body="Order 42 arrived broken"))
    events = await record_events(runtime_of(app).channel_services, admin.org_id)
    at = wh.now()

    await receive(client, number, wh.reaction_message(target, emoji="😮", timestamp=at))
    (message,) = await _history(api, admin)
    assert [(r["emoji"], r["fromContact"], r["member"]) for r in message["reactions"]] == [
        ("😮", True, None)
    ]
    await receive(client, number, wh.reaction_message(target, emoji="❤️", timestamp=at + 1))
    (message,) = await _history(api, admin)
    assert [r["emoji"] for r in message["reactions"]] == ["❤️"]

    await receive(client, number, wh.unreaction_message(target, timestamp=at + 2))
    (message,) = await _history(api, admin)
    assert message["reactions"] == []
    await receive(client, number, wh.reaction_message(target, emoji="👍", timestamp=at + 3))
    await receive(client, number, wh.unreaction_message(target, omit_emoji=True, timestamp=at + 4))
    (message,) = await _history(api, admin)
    assert message["reactions"] == []

    assert [m.type for m in await all_messages(db, admin.org_id)] == ["text"]
    updated = [e for e in events if e["event"] == "messageUpdated"]
    assert len(updated) == 5
    assert {e["id"] for e in updated} == {str(decode_global_id(message["id"], "Message"))}


async def test_a_reaction_before_its_message_is_kept_and_late_webhooks_lose(
    client: httpx.AsyncClient, api: Api, number: WhatsAppAccount, admin: Actor
) -> None:
    """Given a reaction whose message has not arrived yet (webhooks are not ordered)
    When the message arrives, and then an older unreaction is delivered late
    Then the message shows the reaction, and the late webhook changes nothing."""
    target = wh.new_wamid()
    at = wh.now()
    await receive(client, number, wh.reaction_message(target, emoji="🙏", timestamp=at))
    assert await _history(api, admin) == []

    await receive(client, number, wh.text_message(target, body="Thanks!", timestamp=at - 5))
    await receive(client, number, wh.unreaction_message(target, timestamp=at - 1))

    (message,) = await _history(api, admin)
    assert [r["emoji"] for r in message["reactions"]] == ["🙏"]


async def test_a_reply_links_to_the_message_it_quotes_only_when_we_have_it(
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    admin: Actor,
    other_org: Organization,
) -> None:
    """Given a message, and another workspace's message with a known wamid
    When the customer replies to ours, to one we never had, and to the other workspace's
    Then only the first reply links to its message; the others answer null."""
    ours, unknown, theirs = wh.new_wamid(), wh.new_wamid(), wh.new_wamid()
    async with workspace(db, other_org.id) as session:
        await create_message(session, await create_conversation(session), wa_message_id=theirs)
    await receive(client, number, wh.text_message(ours, body="Where is my order?"))
    replies = [wh.new_wamid() for _ in range(3)]
    await receive(
        client,
        number,
        *(
            wh.text_message(reply, body=f"reply {n}", context=wh.reply_context(quoted))
            for n, (reply, quoted) in enumerate(zip(replies, (ours, unknown, theirs), strict=True))
        ),
    )

    history = _by_wamid(await _history(api, admin))
    assert history[replies[0]]["replyTo"] == {
        "id": history[ours]["id"],
        "text": "Where is my order?",
        "waMessageId": ours,
    }
    assert history[replies[1]]["replyTo"] is None
    assert history[replies[2]]["replyTo"] is None
    assert history[ours]["replyTo"] is None


async def test_an_agent_sees_no_reaction_or_quote_of_a_conversation_hidden_from_them(
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
    manager: Actor,
) -> None:
    """Given a reacted message in a conversation assigned to a manager
    When the agent and the manager read the inbox
    Then the agent sees nothing of it; the manager sees the reaction."""
    target = wh.new_wamid()
    await receive(client, number, wh.text_message(target))
    await receive(client, number, wh.reaction_message(target, emoji="👍"))
    async with workspace(db, admin.org_id) as session:
        conversation = (await session.exec(select(Conversation))).one()
        conversation.assignee_membership_id = manager.membership.id
    assert await _history(api, agent) == []
    (message,) = await _history(api, manager)
    assert [r["emoji"] for r in message["reactions"]] == ["👍"]
