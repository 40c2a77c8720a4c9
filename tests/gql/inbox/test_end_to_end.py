"""The inbox end to end: a customer writes, an agent replies, Meta reports, roles hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.fixtures import webhooks as wh
from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.meta import ACCESS_TOKEN
from tests.fixtures.services import FLUSHABLE_REDIS_URL
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Organization, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of
from weflux.sandbox.cloud_api import FakeCloudApi
from weflux.worker.delivery import deliver_due_messages

SECRET = "platform-app-secret-end-to-end"
INBOX = """{ conversations { edges { node { id status unreadCount
  contact { name waId } assignee { id } lastMessage { text direction } } } } }"""
SEND = """mutation($input: SendMessageInput!) { sendMessage(input: $input) {
  id status direction text cursor } }"""
ASSIGN = """mutation($input: AssignConversationInput!) { assignConversation(input: $input) {
  id assignee { id } } }"""
MESSAGES = """query($id: ID!) { conversation(id: $id) { messages(last: 10) { edges { node {
  id direction text status waMessageId sentBy { id } } } } } }"""


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path, meta_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
        meta_app_secret=SECRET,
    )


@pytest.fixture
async def channel(db: Database, settings: Settings, org: Organization) -> WhatsAppAccount:
    async with db.session(org.id) as session:
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=wh.PHONE_NUMBER_ID,
            business_account_id=wh.WABA_ID,
            webhook_key="end-to-end-key-000000000000001",
            credentials_updated_at=utcnow(),
            status="CONNECTED",
        )
        seal(KeyRing.from_settings(settings), account, "access_token_enc", ACCESS_TOKEN)
        session.add(account)
    return account


async def webhook(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    raw = wh.encode(body)
    response = await client.post(
        "/webhooks/whatsapp",
        content=raw,
        headers={"X-Hub-Signature-256": wh.sign(raw, SECRET), "Content-Type": "application/json"},
    )
    assert response.status_code == 200


async def test_a_customer_writes_an_agent_replies_and_meta_reports(
    client: httpx.AsyncClient,
    app: Any,
    fake_meta: FakeCloudApi,
    channel: WhatsAppAccount,
    agent: Actor,
    manager: Actor,
    admin: Actor,
    db: Database,
) -> None:
    # Given a customer's message through a signed webhook
    await webhook(
        client,
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(body="Is my order on its way?")],
                contacts=[wh.contact()],
            )
        ),
    )
    agent_token = await token_for(client, agent)
    inbox = (await gql(client, agent_token, INBOX)).json()["data"]["conversations"]["edges"]
    (conversation,) = [edge["node"] for edge in inbox]
    assert conversation["contact"] == {"name": wh.CUSTOMER_NAME, "waId": wh.CUSTOMER_WA_ID}
    assert conversation["lastMessage"] == {
        "text": "Is my order on its way?",
        "direction": "INBOUND",
    }
    assert conversation["unreadCount"] == 1

    # When the agent takes it and replies (twice, as a flaky network would)
    me = encode_global_id("Member", agent.membership.id)
    taken = await gql(
        client,
        agent_token,
        ASSIGN,
        {"input": {"conversationId": conversation["id"], "assigneeId": me}},
    )
    assert taken.json()["data"]["assignConversation"]["assignee"] == {"id": me}
    reply = {
        "conversationId": conversation["id"],
        "text": "Yes, tomorrow!",
        "clientMessageId": "c-1",
    }
    first = (await gql(client, agent_token, SEND, {"input": reply})).json()["data"]["sendMessage"]
    again = (await gql(client, agent_token, SEND, {"input": reply})).json()["data"]["sendMessage"]
    assert first["id"] == again["id"]
    assert first["status"] == "QUEUED"

    # Then the worker delivers it once, through the Cloud API
    runtime = runtime_of(app)
    await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings)
    (sent,) = fake_meta.sent
    assert sent.payload["text"] == {"body": "Yes, tomorrow!"}
    assert sent.to == wh.CUSTOMER_WA_ID

    # And Meta's statuses move it forward, in any order
    for state in ("read", "delivered"):
        await webhook(
            client,
            wh.webhook_body(wh.messages_change(statuses=[wh.status(sent.wa_message_id, state)])),
        )
    messages = await gql(client, agent_token, MESSAGES, {"id": conversation["id"]})
    edges = messages.json()["data"]["conversation"]["messages"]["edges"]
    outbound = edges[-1]["node"]
    assert (outbound["status"], outbound["waMessageId"], outbound["sentBy"]) == (
        "READ",
        sent.wa_message_id,
        {"id": me},
    )

    # And only those who may see the conversation see it
    manager_token = await token_for(client, manager)
    assert (
        len((await gql(client, manager_token, INBOX)).json()["data"]["conversations"]["edges"]) == 1
    )
    admin_token = await token_for(client, admin)
    move = {"conversationId": conversation["id"], "assigneeId": None}
    await gql(
        client,
        admin_token,
        ASSIGN,
        {"input": move | {"assigneeId": encode_global_id("Member", admin.membership.id)}},
    )
    assert (await gql(client, agent_token, INBOX)).json()["data"]["conversations"]["edges"] == []
    hidden = await gql(client, agent_token, SEND, {"input": reply | {"clientMessageId": "c-2"}})
    assert error_codes(hidden) == ["NOT_FOUND"]


async def test_a_reply_outside_the_window_needs_a_template(
    client: httpx.AsyncClient, channel: WhatsAppAccount, admin: Actor, db: Database
) -> None:
    old = int(utcnow().timestamp()) - 25 * 3600
    await webhook(
        client,
        wh.webhook_body(
            wh.messages_change(messages=[wh.text_message(timestamp=old)], contacts=[wh.contact()])
        ),
    )
    token = await token_for(client, admin)
    conversation = (await gql(client, token, INBOX)).json()["data"]["conversations"]["edges"][0]
    conversation_id = conversation["node"]["id"]
    refused = await gql(
        client, token, SEND, {"input": {"conversationId": conversation_id, "text": "hi"}}
    )
    assert error_codes(refused) == ["OUTSIDE_SERVICE_WINDOW"]
    template = await gql(
        client,
        token,
        """mutation($input: SendTemplateMessageInput!) { sendTemplateMessage(input: $input) {
          status type } }""",
        {
            "input": {
                "conversationId": conversation_id,
                "templateName": "order_update",
                "languageCode": "en_US",
                "bodyParameters": ["Sheena"],
            }
        },
    )
    assert template.json()["data"]["sendTemplateMessage"] == {
        "status": "QUEUED",
        "type": "TEMPLATE",
    }


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_flushing_redis_loses_nothing(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    meta_url: str,
    fake_meta: FakeCloudApi,
    org: Organization,
    admin: Actor,
    db: Database,
    require_redis: None,
) -> None:
    """Redis holds no state of record: pub/sub and counters only.

    The app uses a Redis database of its own (`FLUSHABLE_REDIS_URL`): other workers' tests
    keep counters and budgets in the shared one while this one flushes."""

    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
        meta_app_secret=SECRET,
        redis_url=FLUSHABLE_REDIS_URL,
    )
    async with db.session(org.id) as session:
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=wh.PHONE_NUMBER_ID,
            business_account_id=wh.WABA_ID,
            webhook_key="flush-key-00000000000000000001",
            credentials_updated_at=utcnow(),
            status="CONNECTED",
        )
        seal(KeyRing.from_settings(settings), account, "access_token_enc", ACCESS_TOKEN)
        session.add(account)
    redis = Redis.from_url(FLUSHABLE_REDIS_URL)
    app = create_app(settings)
    try:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await webhook(
                    client,
                    wh.webhook_body(
                        wh.messages_change(messages=[wh.text_message()], contacts=[wh.contact()])
                    ),
                )
                token = await token_for(client, admin)
                await redis.flushdb()
                edges = (await gql(client, token, INBOX)).json()["data"]["conversations"]["edges"]
                reply = {"conversationId": edges[0]["node"]["id"], "text": "still here"}
                queued = await gql(client, token, SEND, {"input": reply})
                assert queued.json()["data"]["sendMessage"]["status"] == "QUEUED"
                await redis.flushdb()
                runtime = runtime_of(app)
                await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings)
                assert [s.payload["text"] for s in fake_meta.sent] == [{"body": "still here"}]
    finally:
        await redis.aclose()
