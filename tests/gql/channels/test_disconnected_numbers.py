"""A disconnected number: answered by its disconnection, resolvable wherever it is referenced."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.api import gql, token_for
from tests.fixtures.factories import Actor, create_conversation, create_whatsapp_account
from weflux.db import Database
from weflux.gql.channels.types import WhatsAppAccountStatus
from weflux.ids import encode_global_id
from weflux.models import AccountStatus, Organization, WhatsAppAccount

DISCONNECT = """mutation($id: ID!) { disconnectWhatsAppAccount(id: $id) {
  id phoneNumberId status hasAppSecret hasWebhookVerifyToken } }"""
ACCOUNTS = """query($disconnected: DisconnectedFilter) {
  whatsAppAccounts(disconnected: $disconnected) { id status } }"""
DEFAULT_ACCOUNTS = "{ whatsAppAccounts { id status } }"
NODE = "query($id: ID!) { node(id: $id) { id ... on WhatsAppAccount { status } } }"
CONVERSATION = """query($id: ID!) { conversation(id: $id) {
  id whatsAppAccount { id status phoneNumberId } } }"""


def _gid(type_name: str, row: Any) -> str:
    return encode_global_id(type_name, row.id)


@pytest.fixture
async def numbers(db: Database, org: Organization) -> tuple[WhatsAppAccount, WhatsAppAccount, str]:
    """A live number and one that is about to be disconnected, with a conversation on it."""
    async with db.session(org.id) as session:
        live = await create_whatsapp_account(session)
        leaving = await create_whatsapp_account(session)
        conversation = await create_conversation(session, account=leaving)
    return live, leaving, _gid("Conversation", conversation)


async def _call(
    client: httpx.AsyncClient, actor: Actor, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await gql(client, await token_for(client, actor), query, variables)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_codes_of(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


async def test_disconnect_answers_the_account_itself(
    client: httpx.AsyncClient, admin: Actor, numbers: tuple[WhatsAppAccount, WhatsAppAccount, str]
) -> None:
    """Given a connected number, when an Admin disconnects it, then the answer is the
    account, DISCONNECTED, without its credentials."""
    _, leaving, _ = numbers
    body = await _call(client, admin, DISCONNECT, {"id": _gid("WhatsAppAccount", leaving)})
    assert body["data"]["disconnectWhatsAppAccount"] == {
        "id": _gid("WhatsAppAccount", leaving),
        "phoneNumberId": leaving.phone_number_id,
        "status": "DISCONNECTED",
        "hasAppSecret": False,
        "hasWebhookVerifyToken": False,
    }


async def test_only_an_admin_disconnects(
    client: httpx.AsyncClient,
    manager: Actor,
    agent: Actor,
    numbers: tuple[WhatsAppAccount, WhatsAppAccount, str],
) -> None:
    """Given a connected number, when a Manager or an Agent disconnects it, then FORBIDDEN."""
    _, leaving, _ = numbers
    for actor in (manager, agent):
        body = await _call(client, actor, DISCONNECT, {"id": _gid("WhatsAppAccount", leaving)})
        assert error_codes_of(body) == ["FORBIDDEN"]


async def test_a_disconnected_number_stays_resolvable_for_every_role(
    client: httpx.AsyncClient,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    numbers: tuple[WhatsAppAccount, WhatsAppAccount, str],
) -> None:
    """Given a disconnected number with an (unassigned) conversation on it, when each role
    reads it through node, the conversation and the list, then it is there, DISCONNECTED,
    and the list leaves it out unless asked."""
    live, leaving, conversation_id = numbers
    live_id, gone_id = _gid("WhatsAppAccount", live), _gid("WhatsAppAccount", leaving)
    await _call(client, admin, DISCONNECT, {"id": gone_id})

    for actor in (admin, manager, agent):
        node = await _call(client, actor, NODE, {"id": gone_id})
        assert node["data"]["node"] == {"id": gone_id, "status": "DISCONNECTED"}, actor
        conversation = await _call(client, actor, CONVERSATION, {"id": conversation_id})
        assert conversation["data"]["conversation"]["whatsAppAccount"] == {
            "id": gone_id,
            "status": "DISCONNECTED",
            "phoneNumberId": leaving.phone_number_id,
        }
        default = await _call(client, actor, DEFAULT_ACCOUNTS)
        assert [a["id"] for a in default["data"]["whatsAppAccounts"]] == [live_id]
        for value, expected in (
            ("EXCLUDE", [live_id]),
            ("INCLUDE", [live_id, gone_id]),
            ("ONLY", [gone_id]),
        ):
            listed = await _call(client, actor, ACCOUNTS, {"disconnected": value})
            assert [a["id"] for a in listed["data"]["whatsAppAccounts"]] == expected, value


async def test_a_disconnected_number_is_read_not_changed(
    client: httpx.AsyncClient, admin: Actor, numbers: tuple[WhatsAppAccount, WhatsAppAccount, str]
) -> None:
    """Given a disconnected number, when it is disconnected again or its credentials are
    updated, then NOT_FOUND (as before): only live numbers change."""
    _, leaving, _ = numbers
    gone_id = _gid("WhatsAppAccount", leaving)
    await _call(client, admin, DISCONNECT, {"id": gone_id})
    again = await _call(client, admin, DISCONNECT, {"id": gone_id})
    assert error_codes_of(again) == ["NOT_FOUND"]
    update = """mutation($input: UpdateWhatsAppCredentialsInput!) {
      updateWhatsAppCredentials(input: $input) { id } }"""
    body = await _call(client, admin, update, {"input": {"id": gone_id, "appSecret": "x" * 20}})
    assert error_codes_of(body) == ["NOT_FOUND"]


async def test_another_workspaces_disconnected_number_is_not_found(
    client: httpx.AsyncClient,
    admin: Actor,
    other_admin: Actor,
    numbers: tuple[WhatsAppAccount, WhatsAppAccount, str],
) -> None:
    """Given a number disconnected in one workspace, when another workspace's Admin asks
    for it, then NOT_FOUND everywhere and no list shows it."""
    _, leaving, _ = numbers
    gone_id = _gid("WhatsAppAccount", leaving)
    await _call(client, admin, DISCONNECT, {"id": gone_id})
    for query in (NODE, DISCONNECT):
        body = await _call(client, other_admin, query, {"id": gone_id})
        assert error_codes_of(body) == ["NOT_FOUND"], query
    for value in ("EXCLUDE", "INCLUDE", "ONLY"):
        listed = await _call(client, other_admin, ACCOUNTS, {"disconnected": value})
        assert listed["data"]["whatsAppAccounts"] == []


def test_the_schema_lists_every_status_the_model_stores() -> None:
    """Given the model's account statuses, then the GraphQL enum lists each of them."""

    stored = {value for name, value in vars(AccountStatus).items() if name.isupper()}
    assert stored == {member.value for member in WhatsAppAccountStatus}
    assert "DISCONNECTED" in stored
