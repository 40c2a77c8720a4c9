"""startConversation: writing first to a customer, with an approved template, within quotas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor, create_contact, create_conversation
from tests.fixtures.inbox import Api, codes, gid
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    Message,
    MessageStatus,
    MessageTemplate,
    WhatsAppAccount,
)
from weflux.services import quotas
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER

START = """mutation($input: StartConversationInput!) { startConversation(input: $input) {
  id status assignee { id } contact { id name phoneNumber waId } lastMessage { text status } } }"""
MEMBER_QUOTA = 5
WORKSPACE_QUOTA = 8


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        rate_limit_template_sends_member=f"{MEMBER_QUOTA}/day",
        rate_limit_template_sends_workspace=f"{WORKSPACE_QUOTA}/day",
    )


def _input(account: WhatsAppAccount, phone: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "whatsAppAccountId": gid("WhatsAppAccount", account.id),
        "phoneNumber": phone,
        "templateName": "hello_world",
        "languageCode": "en_US",
    }
    return {"input": values | overrides}


async def _refused(api: Api, actor: Actor, variables: dict[str, Any]) -> dict[str, Any]:
    """A send over a quota: GraphQL's error, answered with HTTP 429 and Retry-After."""
    response = await api.client.post(
        "/graphql",
        json={"query": START, "variables": variables},
        headers={"Authorization": f"Bearer {await api.token(actor)}"},
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    body: dict[str, Any] = response.json()
    assert codes(body) == ["RATE_LIMITED"]
    return body


async def _rows(db: Database, actor: Actor, model: Any) -> list[Any]:
    async with db.session(actor.org_id) as session:
        return list((await session.exec(select(model))).all())


async def test_a_new_number_gets_a_contact_a_conversation_and_the_template(
    api: Api, db: Database, admin: Actor, account: WhatsAppAccount
) -> None:
    body = await api(
        admin, START, _input(account, "+1 650 253 0000", contactName="Ana", bodyParameters=[])
    )
    started = body["data"]["startConversation"]
    assert started["contact"] == {
        "id": started["contact"]["id"],
        "name": "Ana",
        "phoneNumber": "+16502530000",
        "waId": "16502530000",
    }
    assert started["status"] == "OPEN"
    assert started["assignee"] == {"id": gid("Member", admin.membership.id)}
    assert started["lastMessage"] == {"text": "Template hello_world (en_US)", "status": "QUEUED"}
    (message,) = await _rows(db, admin, Message)
    assert (message.type, message.status) == ("template", MessageStatus.QUEUED)

    # The same number again: the same contact and conversation, a second template.
    again = await api(admin, START, _input(account, "16502530000", contactName="Other"))
    assert again["data"]["startConversation"]["id"] == started["id"]
    assert again["data"]["startConversation"]["contact"]["name"] == "Ana"
    assert len(await _rows(db, admin, Contact)) == 1
    assert len(await _rows(db, admin, Message)) == 2


async def test_an_existing_contact_is_written_to_in_their_conversation(
    api: Api, db: Database, admin: Actor, manager: Actor, account: WhatsAppAccount
) -> None:
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session, wa_id="4915112345678", name="Bea")
        conversation = await create_conversation(
            session, contact=contact, account=account, status="RESOLVED"
        )
    body = await api(manager, START, _input(account, "+49 151 12345678"))
    started = body["data"]["startConversation"]
    assert started["id"] == gid("Conversation", conversation.id)
    assert started["status"] == "OPEN"  # reopened
    assert started["assignee"] is None  # an existing conversation keeps its assignee
    assert started["contact"]["name"] == "Bea"


async def test_an_opted_out_contact_is_refused_and_nothing_is_queued(
    api: Api, db: Database, admin: Actor, account: WhatsAppAccount
) -> None:
    async with db.session(admin.org_id) as session:
        await create_contact(session, wa_id="16502530001", opted_out=True)
    body = await api(admin, START, _input(account, "+16502530001"))
    assert codes(body) == ["CONTACT_OPTED_OUT"]
    assert await _rows(db, admin, Message) == []
    assert await _rows(db, admin, Conversation) == []


@pytest.mark.parametrize(
    "phone", ["", "12345", "+1 555", "call me", "+999 123456789", "+1 650 253 00001234"]
)
async def test_invalid_numbers_are_refused(
    api: Api, db: Database, admin: Actor, account: WhatsAppAccount, phone: str
) -> None:
    body = await api(admin, START, _input(account, phone))
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["details"][0]["field"] == "phoneNumber"
    assert body["errors"][0]["message"] == INVALID_PHONE_NUMBER  # createContact's too
    assert await _rows(db, admin, Contact) == []


async def test_a_known_template_must_be_approved_and_fully_parameterised(
    api: Api, db: Database, admin: Actor, account: WhatsAppAccount
) -> None:
    async with db.session(admin.org_id) as session:
        for name, status in (("hello_world", "APPROVED"), ("promo", "REJECTED")):
            session.add(
                MessageTemplate(
                    org_id=admin.org_id,
                    account_id=account.id,
                    name=name,
                    language="en_US",
                    status=status,
                    parameter_count=1,
                )
            )
    for overrides in ({"templateName": "promo", "bodyParameters": ["x"]}, {}):
        body = await api(admin, START, _input(account, "+16502530002", **overrides))
        assert codes(body) == ["BAD_USER_INPUT"]
    assert await _rows(db, admin, Contact) == []
    assert await _rows(db, admin, Message) == []
    body = await api(admin, START, _input(account, "+16502530002", bodyParameters=["Ana"]))
    assert body["data"]["startConversation"]["lastMessage"]["text"].endswith(": Ana")


async def test_agents_may_start_but_not_into_someone_elses_conversation(
    api: Api, db: Database, agent: Actor, manager: Actor, account: WhatsAppAccount
) -> None:
    body = await api(agent, START, _input(account, "+16502530003"))
    assert body["data"]["startConversation"]["assignee"] == {
        "id": gid("Member", agent.membership.id)
    }
    async with db.session(manager.org_id) as session:
        contact = await create_contact(session, wa_id="16502530004")
        await create_conversation(
            session,
            contact=contact,
            account=account,
            assignee_membership_id=manager.membership.id,
        )
    refused = await api(agent, START, _input(account, "+16502530004"))
    assert codes(refused) == ["CONFLICT"]
    assert len(await _rows(db, manager, Message)) == 1


async def test_another_workspaces_number_is_not_found(
    api: Api,
    db: Database,
    admin: Actor,
    other_org_agent: Actor,
    account: WhatsAppAccount,
) -> None:
    body = await api(other_org_agent, START, _input(account, "+16502530005"))
    assert codes(body) == ["NOT_FOUND"]
    assert await _rows(db, other_org_agent, Contact) == []
    assert await _rows(db, admin, Contact) == []


async def test_template_sends_are_limited_per_member_and_per_workspace(
    api: Api, admin: Actor, agent: Actor, account: WhatsAppAccount
) -> None:
    for n in range(MEMBER_QUOTA):
        body = await api(agent, START, _input(account, f"+1650253010{n}"))
        assert "errors" not in body, body
    body = await _refused(api, agent, _input(account, "+16502530199"))
    assert "for you" in body["errors"][0]["message"]
    for n in range(WORKSPACE_QUOTA - MEMBER_QUOTA):
        body = await api(admin, START, _input(account, f"+1650253020{n}"))
        assert "errors" not in body, body
    body = await _refused(api, admin, _input(account, "+16502530299"))
    assert "this workspace" in body["errors"][0]["message"]


async def test_the_messaging_tier_bounds_new_customers_per_day(
    api: Api,
    db: Database,
    admin: Actor,
    account: WhatsAppAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(quotas.TIER_LIMITS, "TIER_250", 2)
    async with db.session(admin.org_id) as session:
        row = await session.get(WhatsAppAccount, account.id)
        assert row is not None
        row.messaging_limit_tier = "TIER_250"
    for phone in ("+16502530301", "+16502530302"):
        assert "errors" not in await api(admin, START, _input(account, phone))
    body = await _refused(api, admin, _input(account, "+16502530303"))
    assert "TIER_250" in body["errors"][0]["message"]
    # A customer already written to today is not a new conversation.
    assert "errors" not in await api(admin, START, _input(account, "+16502530301"))
    assert len(await _rows(db, admin, Message)) == 3
