"""Sandbox channels: the demo number's sends answered in process, statuses through the intake."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import gql
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.live import live_server, until_listening
from tests.fixtures.sandbox import Demo, demo_token
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Contact, Conversation, QualityRating, Role
from weflux.realtime.broker import InProcessBroker
from weflux.runtime import runtime_of
from weflux.sandbox import webhooks
from weflux.sandbox.channels import FAILING_SUFFIX, PRODUCTION_REFUSAL, REFUSED_SUFFIX, Sandbox
from weflux.sandbox.cloud_api import new_wamid
from weflux.services.channels import SandboxRefused, Services
from weflux.whatsapp.client import CloudApiClient
from weflux.whatsapp.errors import ErrorKind, MetaApiError

pytest_plugins = ["tests.fixtures.sandbox"]

SEND = """mutation($input: SendMessageInput!) { sendMessage(input: $input) { id status } }"""
UPDATED = """subscription($c: ID) { messageUpdated(conversationId: $c) {
  status waMessageId errorCode } }"""


async def _conversation(db: Database, workspace: Demo, wa_id: str) -> str:
    """The id of the demo conversation with `wa_id` (waiting for a webhook to create it)."""
    for _ in range(100):  # an inbound webhook is processed just after its 200
        async with db.session(workspace.account.org_id) as session:
            statement = (
                select(Conversation.id)
                .join(Contact, Contact.id == Conversation.contact_id)  # type: ignore[arg-type]
                .where(Contact.wa_id == wa_id)
            )
            found = (await session.exec(statement)).first()
        if found is not None:
            return encode_global_id("Conversation", found)
        await asyncio.sleep(0.05)
    raise AssertionError("no such conversation")


async def _statuses_until(socket: GraphQLSocket, operation: str, last: str) -> list[Any]:
    """The messageUpdated payloads until one has status `last`."""
    seen: list[Any] = []
    while not seen or seen[-1]["status"] != last:
        seen.append((await socket.next(operation))["payload"]["data"]["messageUpdated"])
    return seen


async def _reply(
    live: str, http: httpx.AsyncClient, live_app: Starlette, token: str, conversation: str
) -> tuple[GraphQLSocket, str]:
    socket = await GraphQLSocket.connect(live, token)
    operation = await socket.subscribe(UPDATED, {"c": conversation})
    await until_listening(live_app, 1)
    response = await gql(
        http, token, SEND, {"input": {"conversationId": conversation, "text": "On its way"}}
    )
    assert response.json()["data"]["sendMessage"]["status"] == "QUEUED", response.text
    return socket, operation


async def test_a_sandbox_send_gets_a_wamid_and_its_statuses_arrive_in_order(
    live: str, http: httpx.AsyncClient, db: Database, demo_workspace: Demo, live_app: Starlette
) -> None:
    token = await demo_token(http, demo_workspace, Role.AGENT)
    conversation = await _conversation(db, demo_workspace, "15550000002")  # the Agent's
    socket, operation = await _reply(live, http, live_app, token, conversation)
    seen = await _statuses_until(socket, operation, "READ")
    await socket.close()
    order = [update["status"] for update in seen]
    assert order[-3:] == ["SENT", "DELIVERED", "READ"]
    sandbox = runtime_of(live_app).sandbox
    assert sandbox is not None
    (sent,) = sandbox.api.sent
    assert sent.to == "15550000002"
    assert sent.phone_number_id == demo_workspace.account.phone_number_id
    assert {update["waMessageId"] for update in seen[-3:]} == {sent.wa_message_id}
    assert sent.wa_message_id.startswith("wamid.")


async def test_a_recipient_ending_in_0131049_fails_with_131049(
    live: str, http: httpx.AsyncClient, db: Database, demo_workspace: Demo, live_app: Starlette
) -> None:
    customer = "1555" + FAILING_SUFFIX
    account = demo_workspace.account
    raw = webhooks.encode(
        webhooks.body(
            account.business_account_id,
            webhooks.messages_change(
                account.phone_number_id,
                account.display_phone_number,
                contacts=[webhooks.contact(customer, "Unlucky Customer")],
                messages=[webhooks.inbound(new_wamid(), customer, "text", {"body": "Hi"})],
            ),
        )
    )
    answer = await http.post(
        f"/webhooks/whatsapp/{account.webhook_key}",
        content=raw,
        headers={
            "X-Hub-Signature-256": webhooks.sign(raw, demo_workspace.app_secret),
            "Content-Type": "application/json",
        },
    )
    assert answer.status_code == 200
    token = await demo_token(http, demo_workspace, Role.ADMIN)
    conversation = await _conversation(db, demo_workspace, customer)
    socket, operation = await _reply(live, http, live_app, token, conversation)
    seen = await _statuses_until(socket, operation, "FAILED")
    await socket.close()
    assert seen[-1]["errorCode"] == 131049
    assert "READ" not in [update["status"] for update in seen]


async def test_production_has_no_sandbox_and_refuses_sandbox_channels(
    demo_workspace: Demo, live_settings: Settings
) -> None:
    """`Services` without a sandbox (what production builds) refuses the demo number."""
    cloud = CloudApiClient.from_settings(live_settings)
    services = Services(
        keyring=KeyRing.from_settings(live_settings), cloud=cloud, broker=InProcessBroker()
    )
    try:
        with pytest.raises(SandboxRefused) as refused:
            services.cloud_for(demo_workspace.account)
    finally:
        await cloud.aclose()
    assert refused.value.message == PRODUCTION_REFUSAL
    assert "WEFLUX_ENV=production" in PRODUCTION_REFUSAL


async def test_the_sandbox_answers_in_metas_shapes_without_a_socket(tmp_path: Path) -> None:
    sandbox = Sandbox(make_settings(tmp_path, sandbox_status_delays="0,0,0"))
    sandbox.know("912345678901234")  # as `Services.cloud_for` does for a sandbox channel
    try:
        health = await sandbox.client.phone_number_health("912345678901234", "any-token")
        assert health.quality_rating == QualityRating.GREEN
        assert health.status == "CONNECTED"
        sent = await sandbox.client.send_message(
            "912345678901234",
            "any-token",
            {"to": "+15551230001", "type": "text", "text": {"body": "Hello"}},
        )
        assert sent.wa_message_id.startswith("wamid.")
        assert sent.wa_id == "15551230001"
        with pytest.raises(MetaApiError) as refused:
            await sandbox.client.send_message(
                "912345678901234",
                "any-token",
                {"to": "+1555" + REFUSED_SUFFIX, "type": "text", "text": {"body": "Hello"}},
            )
        assert refused.value.code == 131026
        assert refused.value.fbtrace_id is not None
        assert refused.value.kind == ErrorKind.PERMANENT
    finally:
        await sandbox.aclose()  # the status tasks (no intake attached: nothing posted) end too


async def test_the_ticks_arrive_through_redis_too(
    db: Database, demo_workspace: Demo, live_settings: Settings, require_redis: None
) -> None:
    app = create_app(live_settings.model_copy(update={"redis_url": TEST_REDIS_URL}))
    async with (
        live_server(app) as base,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as client,
    ):
        token = await demo_token(client, demo_workspace, Role.AGENT)
        conversation = await _conversation(db, demo_workspace, "15550000002")
        socket, operation = await _reply(base, client, app, token, conversation)
        seen = await _statuses_until(socket, operation, "READ")
        await socket.close()
    assert [update["status"] for update in seen][-3:] == ["SENT", "DELIVERED", "READ"]


SYNC_TEMPLATES = """mutation($id: ID!) { syncMessageTemplates(whatsAppAccountId: $id) {
  name status parameterCount } }"""
START = """mutation($input: StartConversationInput!) { startConversation(input: $input) {
  id lastMessage { text status } } }"""


async def test_the_sandbox_lists_demo_templates_and_a_conversation_can_start_with_one(
    live: str, http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given the demo's sandbox channel, when the Admin syncs its templates, then the
    sandbox answers the demo templates (no request leaves the machine), and an Agent can
    start a conversation with an approved one; a wrong parameter count is refused."""
    account_id = encode_global_id("WhatsAppAccount", demo_workspace.account.id)
    admin = await demo_token(http, demo_workspace, Role.ADMIN)
    synced = await gql(http, admin, SYNC_TEMPLATES, {"id": account_id})
    templates = {t["name"]: t for t in synced.json()["data"]["syncMessageTemplates"]}
    assert templates["order_update"] == {
        "name": "order_update",
        "status": "APPROVED",
        "parameterCount": 2,
    }
    assert set(templates) == {"hello_world", "order_update", "spring_sale"}

    agent = await demo_token(http, demo_workspace, Role.AGENT)
    start = {
        "whatsAppAccountId": account_id,
        "phoneNumber": "+442071838750",
        "templateName": "order_update",
        "languageCode": "en_US",
    }
    wrong = await gql(http, agent, START, {"input": {**start, "bodyParameters": ["Ada"]}})
    (error,) = wrong.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [d["field"] for d in error["extensions"]["details"]] == ["bodyParameters"]
    started = await gql(http, agent, START, {"input": {**start, "bodyParameters": ["Ada", "#7"]}})
    assert started.json()["data"]["startConversation"]["lastMessage"]["status"] == "QUEUED"


UPDATE_CREDENTIALS = """mutation($input: UpdateWhatsAppCredentialsInput!) {
  updateWhatsAppCredentials(input: $input) { status credentialsUpdatedAt } }"""


async def test_a_sandbox_channels_new_access_token_is_checked_by_the_sandbox_not_meta(
    live: str, http: httpx.AsyncClient, demo_workspace: Demo
) -> None:
    """Given the demo's sandbox channel (Meta unreachable, as offline), when the Admin
    gives it a new access token, then the sandbox checks it like every other call of the
    channel (nothing leaves the machine), and the number stays connected."""
    account_id = encode_global_id("WhatsAppAccount", demo_workspace.account.id)
    admin = await demo_token(http, demo_workspace, Role.ADMIN)
    variables = {"input": {"id": account_id, "accessToken": "a-new-sandbox-token"}}
    response = await gql(http, admin, UPDATE_CREDENTIALS, variables)
    assert "errors" not in response.json(), response.text
    updated = response.json()["data"]["updateWhatsAppCredentials"]
    assert updated["status"] == "CONNECTED"
