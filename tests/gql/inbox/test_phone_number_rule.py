"""One rule for a typed phone number: createContact and startConversation agree on every row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from tests.fixtures.factories import Actor
from tests.fixtures.inbox import Api, codes, gid
from weflux.db import Database
from weflux.models import Contact, WhatsAppAccount
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER

CREATE = """mutation($input: CreateContactInput!) {
  createContact(input: $input) { id phoneNumber waId } }"""
START = """mutation($input: StartConversationInput!) { startConversation(input: $input) {
  contact { id phoneNumber waId } } }"""

# What a person types, and the E.164 number both mutations store (None: both refuse).
TABLE = [
    ("+15551230001", "+15551230001"),  # the sandbox's customer (docs/sandbox.md): a 555 number
    ("+1 555 013 1049", "+15550131049"),
    ("15550000001", "+15550000001"),  # `weflux demo`'s contact
    ("+1 (650) 253-0000", "+16502530000"),
    ("+44 7700 900123", "+447700900123"),  # a range the library's data calls unassigned
    ("+44 (0)20 7946 0018", "+442079460018"),  # the trunk 0 dropped: one contact, not two
    ("+49.151.1234.5678", "+4915112345678"),
    ("+351 912 345 678", "+351912345678"),
    ("+39 06 1234 5678", "+390612345678"),  # Italy keeps its leading 0
    # Arabic-Indic digits, as a phone keyboard types them
    ("+\u0664\u0669 \u0663\u0660 \u0661\u0662\u0663\u0664\u0665\u0666\u0667", "+49301234567"),
    ("1234567", None),  # 7 digits, but +1 dials 10
    ("123456789012345", None),  # 15 digits, but too long for +1
    ("+1 555 0100", None),  # a local-only length
    ("+999 123456789", None),  # no such country code
    ("+49 30 12ab567", None),
    ("+1 650 253 0000 ext 12", None),
    ("0044 20 7946 0018", None),  # an international prefix instead of +
    ("", None),
]


def _start(account: WhatsAppAccount, phone: str) -> dict[str, Any]:
    return {
        "input": {
            "whatsAppAccountId": gid("WhatsAppAccount", account.id),
            "phoneNumber": phone,
            "templateName": "hello_world",
            "languageCode": "en_US",
        }
    }


def _refused_on_phone_number(body: dict[str, Any]) -> None:
    assert codes(body) == ["BAD_USER_INPUT"], body
    (error,) = body["errors"]
    assert error["message"] == INVALID_PHONE_NUMBER
    assert error["extensions"]["details"] == [
        {"field": "phoneNumber", "message": INVALID_PHONE_NUMBER}
    ]


@pytest.mark.parametrize(("typed", "stored"), TABLE)
async def test_create_contact_and_start_conversation_agree(
    api: Api,
    db: Database,
    admin: Actor,
    account: WhatsAppAccount,
    typed: str,
    stored: str | None,
) -> None:
    # when a person types the number into createContact, then into startConversation
    created = await api(admin, CREATE, {"input": {"phoneNumber": typed}})
    started = await api(admin, START, _start(account, typed))

    # then both store the same E.164 number, as one contact, or both refuse it alike
    if stored is None:
        _refused_on_phone_number(created)
        _refused_on_phone_number(started)
        async with db.session(admin.org_id) as session:
            assert (await session.exec(select(Contact))).all() == []
        return
    assert "errors" not in created, created
    assert "errors" not in started, started
    contact = created["data"]["createContact"]
    assert contact == {"id": contact["id"], "phoneNumber": stored, "waId": stored[1:]}
    assert started["data"]["startConversation"]["contact"] == contact
