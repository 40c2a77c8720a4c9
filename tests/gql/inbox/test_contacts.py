"""Contacts: created with a normalised number, one per number, renamed, listed by name."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.factories import Actor, create_contact
from tests.fixtures.inbox import CONTACTS, NODE, Api, codes, gid, node_ids, workspace
from weflux.db import Database
from weflux.models import Contact, Organization
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER

CREATE = """
mutation($input: CreateContactInput!) {
  createContact(input: $input) { id name phoneNumber waId userId optedOut }
}"""
UPDATE = """
mutation($input: UpdateContactInput!) { updateContact(input: $input) { id name phoneNumber } }"""


@pytest.mark.parametrize(
    "typed",
    ["+49 30 1234567", "4930 1234567", "+49 (30) 123-4567", "+49.30.123.4567", " 49301234567 "],
)
async def test_a_number_is_stored_as_e164(api: Api, manager: Actor, typed: str) -> None:
    body = await api(manager, CREATE, {"input": {"phoneNumber": typed, "name": "  Ada  "}})
    assert "errors" not in body, body
    contact = body["data"]["createContact"]
    assert contact["phoneNumber"] == "+49301234567"
    assert contact["waId"] == "49301234567"
    assert contact["name"] == "Ada"
    assert contact["userId"] is None
    assert contact["optedOut"] is False
    # and it can be read back by id
    found = await api(manager, NODE, {"id": contact["id"]})
    assert found["data"]["node"] == {"id": contact["id"], "name": "Ada"}


@pytest.mark.parametrize(
    "typed",
    [
        "+49 \uff13\uff10 \uff11\uff12\uff13\uff14\uff15\uff16\uff17",  # fullwidth
        "+\u0664\u0669 \u0663\u0660 \u0661\u0662\u0663\u0664\u0665\u0666\u0667",  # Arabic-Indic
    ],
    ids=["fullwidth", "arabic-indic"],
)
async def test_a_number_typed_in_other_digits_is_stored_in_ascii_digits(
    api: Api, manager: Actor, typed: str
) -> None:
    """Given a number typed with another script's digits (a phone keyboard's, as
    startConversation's parser reads them),
    when a contact is created with it,
    then it is stored in ASCII digits, the one contact of that number: before, the digits
    were kept as typed (`\\d` matched them), a second contact of the same number whose
    WhatsApp id no message could reach."""
    body = await api(manager, CREATE, {"input": {"phoneNumber": typed}})
    assert "errors" not in body, body
    contact = body["data"]["createContact"]
    assert (contact["phoneNumber"], contact["waId"]) == ("+49301234567", "49301234567")
    again = await api(manager, CREATE, {"input": {"phoneNumber": "+49 30 1234567"}})
    assert codes(again) == ["CONFLICT"]


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "+",
        "123456",
        "1234567890123456",
        "+49 1511 2345 6789 01",  # 16 digits, though Germany's data allows the length
        "+49 30 12ab567",
        "++49301234567",
        "49+301234567",
        "0049301234567",
        "+0301234567",
        "49/30/1234567",
    ],
)
async def test_a_malformed_number_is_bad_user_input(api: Api, admin: Actor, typed: str) -> None:
    body = await api(admin, CREATE, {"input": {"phoneNumber": typed}})
    assert codes(body) == ["BAD_USER_INPUT"]
    (error,) = body["errors"]
    assert error["extensions"]["details"][0]["field"] == "phoneNumber"
    # one wording for a bad number, here and in startConversation
    assert error["message"] == INVALID_PHONE_NUMBER


async def test_the_shortest_and_longest_numbers_pass(api: Api, admin: Actor) -> None:
    # lengths are the country's (Niue dials 4 digits, Germany up to 13), at most 15 in all
    for digits in ("6831234", "491511234567890"):
        body = await api(admin, CREATE, {"input": {"phoneNumber": digits}})
        assert body["data"]["createContact"]["waId"] == digits, body
        assert body["data"]["createContact"]["name"] is None


async def test_one_contact_per_number_in_a_workspace_but_not_across(
    api: Api, admin: Actor, manager: Actor, other_admin: Actor
) -> None:
    first = await api(admin, CREATE, {"input": {"phoneNumber": "+44 7700 900123", "name": "A"}})
    assert "errors" not in first, first
    again = await api(manager, CREATE, {"input": {"phoneNumber": "447700900123", "name": "B"}})
    assert codes(again) == ["CONFLICT"]
    assert again["errors"][0]["extensions"]["details"][0]["field"] == "phoneNumber"
    elsewhere = await api(other_admin, CREATE, {"input": {"phoneNumber": "447700900123"}})
    assert "errors" not in elsewhere, elsewhere


async def test_agents_neither_create_nor_rename(
    api: Api, db: Database, org: Organization, agent: Actor
) -> None:
    body = await api(agent, CREATE, {"input": {"phoneNumber": "+447700900123"}})
    assert codes(body) == ["FORBIDDEN"]
    async with workspace(db, org.id) as session:
        contact = await create_contact(session)
    body = await api(agent, UPDATE, {"input": {"id": gid("Contact", contact.id), "name": "X"}})
    assert codes(body) == ["FORBIDDEN"]


async def test_a_contact_is_renamed_and_the_name_cleared(
    api: Api, db: Database, org: Organization, manager: Actor
) -> None:
    async with workspace(db, org.id) as session:
        contact = await create_contact(session, name="Old")
    contact_id = gid("Contact", contact.id)

    renamed = await api(manager, UPDATE, {"input": {"id": contact_id, "name": " New name "}})
    assert renamed["data"]["updateContact"]["name"] == "New name"
    untouched = await api(manager, UPDATE, {"input": {"id": contact_id}})
    assert untouched["data"]["updateContact"]["name"] == "New name"
    cleared = await api(manager, UPDATE, {"input": {"id": contact_id, "name": None}})
    assert cleared["data"]["updateContact"]["name"] is None
    blank = await api(manager, UPDATE, {"input": {"id": contact_id, "name": "   "}})
    assert blank["data"]["updateContact"]["name"] is None

    for bad in ("x" * 257, "tab\there"):
        body = await api(manager, UPDATE, {"input": {"id": contact_id, "name": bad}})
        assert codes(body) == ["BAD_USER_INPUT"]
        assert body["errors"][0]["extensions"]["details"][0]["field"] == "name"
    for missing in (gid("Contact", org.id), gid("Conversation", contact.id), "garbage"):
        body = await api(manager, UPDATE, {"input": {"id": missing, "name": "Y"}})
        assert codes(body) == ["NOT_FOUND"]


async def test_contacts_page_by_name_with_the_unnamed_last(
    api: Api, db: Database, org: Organization, admin: Actor, agent: Actor
) -> None:
    # given named contacts (with a tie) and unnamed ones
    async with workspace(db, org.id) as session:
        rows: list[Contact] = []
        for name in ("Carla", "alpha", "Bruno", "Bruno", None, "Dora", None, "Eve"):
            rows.append(await create_contact(session, name=name))
    named = sorted((r for r in rows if r.name is not None), key=lambda r: (r.name, r.id))
    unnamed = sorted((r for r in rows if r.name is None), key=lambda r: r.id)
    expected = [gid("Contact", r.id) for r in named + unnamed]
    expected_names = [r.name for r in named + unnamed]

    # when paging by 3
    seen: list[str] = []
    after = None
    while True:
        body = await api(admin, CONTACTS, {"first": 3, "after": after})
        seen += node_ids(body, "contacts")
        page = body["data"]["contacts"]["pageInfo"]
        if not page["hasNextPage"]:
            break
        after = page["endCursor"]

    # then every contact came once, in name order (the database's collation), unnamed last
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))
    by_id = {gid("Contact", r.id): r.name for r in rows}
    names = [by_id[i] for i in seen]
    assert names[-2:] == [None, None]
    assert seen[-2:] == expected[-2:]
    assert set(names[:-2]) == set(expected_names[:-2])
    assert [n for n in names if n in ("Bruno", "Carla", "Dora", "Eve")] == [
        "Bruno",
        "Bruno",
        "Carla",
        "Dora",
        "Eve",
    ]
    # and an agent sees none of them: no conversation of theirs leads there
    assert node_ids(await api(agent, CONTACTS, {"first": 100}), "contacts") == []


async def test_contact_search_and_limits(
    api: Api, db: Database, org: Organization, manager: Actor
) -> None:
    async with workspace(db, org.id) as session:
        percent = await create_contact(session, name="50% off", wa_id="4917000000001")
        other = await create_contact(session, name="500 off", wa_id="4917000000002")
    body = await api(manager, CONTACTS, {"search": "50%"})
    assert node_ids(body, "contacts") == [gid("Contact", percent.id)]
    body = await api(manager, CONTACTS, {"search": "+49 170 000"})
    assert set(node_ids(body, "contacts")) == {gid("Contact", percent.id), gid("Contact", other.id)}
    body = await api(manager, CONTACTS, {"search": "OFF"})
    assert len(node_ids(body, "contacts")) == 2
    bad: dict[str, Any]
    for bad in ({"first": 101}, {"first": 0}, {"after": "nope"}, {"search": "y" * 101}):
        assert codes(await api(manager, CONTACTS, bad)) == ["BAD_USER_INPUT"], bad
