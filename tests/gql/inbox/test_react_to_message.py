"""reactToMessage: a member's reaction shows at once and is sent by the delivery worker;
validation, the service window, roles and workspaces hold."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.fixtures import webhooks as wh
from tests.fixtures.factories import Actor, create_message
from tests.fixtures.inbound import post_body, receive
from tests.fixtures.inbox import Api, gid, workspace
from tests.fixtures.meta import ACCESS_TOKEN
from tests.fixtures.outbound import all_messages, make_account, make_conversation, record_events
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.ids import decode_global_id
from weflux.models import (
    Conversation,
    Message,
    MessageDirection,
    MessageStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.sandbox.cloud_api import FakeCloudApi
from weflux.services.channels import Services
from weflux.worker.delivery import deliver_due_messages

REACT = """mutation($input: ReactToMessageInput!) { reactToMessage(input: $input) {
  id waMessageId reactions { emoji fromContact member { id } } } }"""
HISTORY = """query { conversations(first: 1) { edges { node { messages(last: 20) { edges {
  node { id type waMessageId reactions { emoji fromContact } } } } } } } }"""


def _react(message_id: str, emoji: str) -> dict[str, Any]:
    return {"input": {"messageId": message_id, "emoji": emoji}}


def _codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


async def _history(api: Api, actor: Actor) -> list[dict[str, Any]]:
    body = await api(actor, HISTORY)
    edges = body["data"]["conversations"]["edges"]
    return [edge["node"] for c in edges for edge in c["node"]["messages"]["edges"]]


async def _message(db: Database, actor: Actor, account: WhatsAppAccount, **values: Any) -> Message:
    """A customer's message in a conversation (the customer wrote a minute ago)."""
    scene = await make_conversation(db, account, **values.pop("contact", {}))
    async with workspace(db, actor.org_id) as session:
        return await create_message(session, scene.conversation, **values)


@pytest.fixture
async def account(db: Database, services: Services, admin: Actor) -> WhatsAppAccount:
    return await make_account(db, services.keyring, admin.org_id, token=ACCESS_TOKEN)


@pytest.fixture
def worker(settings: Settings, services: Services) -> Services:
    """The delivery worker's services: the app's key ring (the number's token), the fake Meta."""
    return Services(
        keyring=KeyRing.from_settings(settings), cloud=services.cloud, broker=services.broker
    )


async def _customer_wrote(
    client: httpx.AsyncClient, number: WhatsAppAccount, api: Api, agent: Actor
) -> tuple[str, dict[str, Any]]:
    """A customer's message through the number's webhook: its wamid, and as the agent lists it."""
    target = wh.new_wamid()
    await receive(client, number, wh.text_message(target, body="Is it in stock?"))
    (message,) = await _history(api, agent)
    return target, message


async def test_a_member_reacts_and_the_worker_sends_it_once(
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    worker: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    agent: Actor,
) -> None:
    """Given a customer's message, which the customer reacted to
    When an agent reacts, reacts the same again, then removes it, the worker running between
    Then the reaction shows at once beside the customer's, WhatsApp gets the reaction and
    its removal once each, and no reaction is listed as a message."""
    target, message = await _customer_wrote(client, number, api, agent)
    await receive(client, number, wh.reaction_message(target, emoji="❤️"))
    me = {"id": gid("Member", agent.membership.id)}

    reacted = await api(agent, REACT, _react(message["id"], "👍🏽"))
    assert reacted["data"]["reactToMessage"] == {
        "id": message["id"],
        "waMessageId": target,
        "reactions": [
            {"emoji": "❤️", "fromContact": True, "member": None},
            {"emoji": "👍🏽", "fromContact": False, "member": me},
        ],
    }
    await deliver_due_messages(db, worker, inbox_settings)
    again = await api(agent, REACT, _react(message["id"], "👍🏽"))
    assert "errors" not in again
    await deliver_due_messages(db, worker, inbox_settings)
    removed = await api(agent, REACT, _react(message["id"], ""))
    assert [r["emoji"] for r in removed["data"]["reactToMessage"]["reactions"]] == ["❤️"]
    await deliver_due_messages(db, worker, inbox_settings)

    assert [
        (sent.to, sent.payload["type"], sent.payload["reaction"]) for sent in fake_meta.sent
    ] == [
        (wh.CUSTOMER_WA_ID, "reaction", {"message_id": target, "emoji": "👍🏽"}),
        (wh.CUSTOMER_WA_ID, "reaction", {"message_id": target, "emoji": ""}),
    ]
    assert [m["type"] for m in await _history(api, agent)] == ["TEXT"]
    stored = await all_messages(db, agent.org_id)
    assert sorted((m.type, m.status) for m in stored) == [
        ("reaction", MessageStatus.SENT),
        ("reaction", MessageStatus.SENT),
        ("text", MessageStatus.RECEIVED),
    ]


@pytest.mark.parametrize(
    "emoji", ["a", "👍👍", " 👍", "👍 ", "ok", "\u200d", "😀" * 40, "<script>"]
)
async def test_anything_but_one_emoji_is_bad_user_input(
    api: Api, db: Database, account: WhatsAppAccount, admin: Actor, emoji: str
) -> None:
    """Given a customer's message
    When a member reacts with text, two emojis, padded or oversized input
    Then BAD_USER_INPUT, and nothing is queued or shown."""
    message = await _message(db, admin, account)

    body = await api(admin, REACT, _react(gid("Message", message.id), emoji))

    assert _codes(body) == ["BAD_USER_INPUT"]
    assert [m.id for m in await all_messages(db, admin.org_id)] == [message.id]


async def test_what_whatsapp_would_refuse_is_refused_first(
    api: Api, db: Database, account: WhatsAppAccount, admin: Actor
) -> None:
    """Given a reply still QUEUED (no wamid yet), a message 31 days old, and a customer who
    last wrote 25 hours ago
    When a member reacts to each
    Then BAD_USER_INPUT, BAD_USER_INPUT and OUTSIDE_SERVICE_WINDOW."""
    queued = await _message(
        db,
        admin,
        account,
        direction=MessageDirection.OUTBOUND,
        status=MessageStatus.QUEUED,
        wa_message_id=None,
    )
    old = await _message(db, admin, account, created_at=utcnow() - timedelta(days=31))
    scene = await make_conversation(db, account, last_inbound_at=utcnow() - timedelta(hours=25))
    async with workspace(db, admin.org_id) as session:
        silent = await create_message(session, scene.conversation, touch_conversation=False)

    codes = [
        _codes(await api(admin, REACT, _react(gid("Message", row.id), "👍")))
        for row in (queued, old, silent)
    ]

    assert codes == [["BAD_USER_INPUT"], ["BAD_USER_INPUT"], ["OUTSIDE_SERVICE_WINDOW"]]


async def test_roles_and_workspaces(
    api: Api,
    db: Database,
    account: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
    other_admin: Actor,
) -> None:
    """Given a message in a conversation assigned to another agent, and one unassigned
    When each role, and an admin of another workspace, react to them
    Then admins and managers may react to both; the agent only to the unassigned one; the
    other workspace finds neither (NOT_FOUND)."""
    hidden = await _message(db, admin, account)
    async with workspace(db, admin.org_id) as session:
        conversation = await session.get(Conversation, hidden.conversation_id)
        assert conversation is not None
        conversation.assignee_membership_id = other_agent.membership.id
    open_ = await _message(db, admin, account)

    async def codes(actor: Actor, row: Message) -> list[str]:
        return _codes(await api(actor, REACT, _react(gid("Message", row.id), "🎉")))

    assert [await codes(a, row) for a in (admin, manager) for row in (hidden, open_)] == [[]] * 4
    assert await codes(agent, hidden) == ["NOT_FOUND"]
    assert await codes(agent, open_) == []
    assert await codes(other_admin, hidden) == ["NOT_FOUND"]
    assert await codes(other_admin, open_) == ["NOT_FOUND"]


async def test_a_reaction_whatsapp_refuses_shows_what_whatsapp_shows(
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    services: Services,
    worker: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    agent: Actor,
) -> None:
    """Given a customer's message
    When an agent's first reaction is refused by WhatsApp for good, then a second is sent,
    then a third is refused for good, the worker running after each
    Then after the first refusal no reaction of theirs shows, after the third the second
    shows again (what the customer sees), and each refusal announces the message
    (messageUpdated)."""
    _, message = await _customer_wrote(client, number, api, agent)
    events = await record_events(services, agent.org_id)

    fake_meta.fail_next(code=131026, details="Message undeliverable")
    shown = await api(agent, REACT, _react(message["id"], "😮"))
    assert [r["emoji"] for r in shown["data"]["reactToMessage"]["reactions"]] == ["😮"]
    await deliver_due_messages(db, worker, inbox_settings)
    assert (await _history(api, agent))[0]["reactions"] == []

    assert "errors" not in await api(agent, REACT, _react(message["id"], "👍🏽"))
    await deliver_due_messages(db, worker, inbox_settings)
    fake_meta.fail_next(code=131026, details="Message undeliverable")
    assert "errors" not in await api(agent, REACT, _react(message["id"], "❤️"))
    await deliver_due_messages(db, worker, inbox_settings)

    (after,) = await _history(api, agent)
    assert after["reactions"] == [{"emoji": "👍🏽", "fromContact": False}]
    stored = await all_messages(db, agent.org_id)
    assert sorted((m.text or "", m.status) for m in stored if m.type == "reaction") == [
        ("❤️", MessageStatus.FAILED),
        ("👍🏽", MessageStatus.SENT),
        ("😮", MessageStatus.FAILED),
    ]
    updated = [e for e in events if e["event"] == "messageUpdated"]
    assert len(updated) == 2  # the worker's: one per refusal
    assert {e["id"] for e in updated} == {str(decode_global_id(message["id"], "Message"))}


async def test_a_reaction_failed_by_a_status_webhook_is_undone(
    client: httpx.AsyncClient,
    api: Api,
    db: Database,
    number: WhatsAppAccount,
    worker: Services,
    inbox_settings: Settings,
    agent: Actor,
) -> None:
    """Given a customer's message and an agent's reaction WhatsApp accepted
    When a status webhook says the reaction's send failed after all
    Then no reaction of the agent shows, and a late `delivered` does not bring it back."""
    _, message = await _customer_wrote(client, number, api, agent)
    assert "errors" not in await api(agent, REACT, _react(message["id"], "👍🏽"))
    await deliver_due_messages(db, worker, inbox_settings)
    (sent,) = [m for m in await all_messages(db, agent.org_id) if m.type == "reaction"]
    assert sent.wa_message_id is not None

    for state in ("failed", "delivered"):
        change = wh.messages_change(
            number.phone_number_id, statuses=[wh.status(sent.wa_message_id, state)]
        )
        await post_body(client, number, wh.webhook_body(change))

    assert (await _history(api, agent))[0]["reactions"] == []
