"""Contact names: the team's name is never overwritten by the WhatsApp profile name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor, create_whatsapp_account
from tests.fixtures.inbox import CONVERSATIONS, Api, codes, node_ids
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.db import Database
from weflux.migrate import downgrade, migrate
from weflux.models import Contact, Organization, WhatsAppAccount, utcnow
from weflux.models.base import UTCDateTime, new_id
from weflux.services.contacts import record_profile_name

SECRET = "platform-app-secret-contact-names"
NAMES = """
query($search: String) {
  contacts(first: 100, search: $search) {
    edges { node { id name profileName nameSetByTeam } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""
RENAME = """
mutation($input: UpdateContactInput!) {
  updateContact(input: $input) { id name profileName nameSetByTeam }
}"""
CREATE = """
mutation($input: CreateContactInput!) {
  createContact(input: $input) { id name profileName nameSetByTeam }
}"""


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
    )


@pytest.fixture
async def channel(db: Database, org: Organization) -> WhatsAppAccount:
    async with db.session(org.id) as session:
        return await create_whatsapp_account(session, phone_number_id=wh.PHONE_NUMBER_ID)


async def _inbound(api: Api, profile_name: str, text: str = "hello") -> None:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(body=text)],
                contacts=[wh.contact(wa_id=wh.CUSTOMER_WA_ID, name=profile_name)],
            )
        )
    )
    response = await api.client.post(
        "/webhooks/whatsapp",
        content=body,
        headers={"X-Hub-Signature-256": wh.sign(body, SECRET), "Content-Type": "application/json"},
    )
    assert response.status_code == 200


async def _the_contact(api: Api, actor: Actor) -> dict[str, Any]:
    body = await api(actor, NAMES)
    assert "errors" not in body, body
    (edge,) = body["data"]["contacts"]["edges"]
    node: dict[str, Any] = edge["node"]
    return node


async def test_an_inbound_message_after_a_rename_keeps_the_teams_name(
    api: Api, channel: WhatsAppAccount, manager: Actor
) -> None:
    """Given a contact who wrote as "Sheena Nelson" and whom the team renamed,
    when they write again under another WhatsApp profile name,
    then the team's name stays and profileName follows WhatsApp."""
    await _inbound(api, "Sheena Nelson")
    contact = await _the_contact(api, manager)
    assert contact["name"] == "Sheena Nelson"  # a new contact is not nameless
    assert contact["profileName"] == "Sheena Nelson"
    assert contact["nameSetByTeam"] is False

    renamed = await api(manager, RENAME, {"input": {"id": contact["id"], "name": "Sheena (VIP)"}})
    assert renamed["data"]["updateContact"] == {
        "id": contact["id"],
        "name": "Sheena (VIP)",
        "profileName": "Sheena Nelson",
        "nameSetByTeam": True,
    }

    await _inbound(api, "Sheena N.", text="it's me again")
    assert await _the_contact(api, manager) == {
        "id": contact["id"],
        "name": "Sheena (VIP)",
        "profileName": "Sheena N.",
        "nameSetByTeam": True,
    }


async def test_clearing_the_teams_name_follows_the_profile_name_again(
    api: Api, channel: WhatsAppAccount, manager: Actor
) -> None:
    """Given a renamed contact, when the team clears the name, then `name` is the
    profile name again and later profile names replace it."""
    await _inbound(api, "Sheena Nelson")
    contact_id = (await _the_contact(api, manager))["id"]
    await api(manager, RENAME, {"input": {"id": contact_id, "name": "Sheena (VIP)"}})

    cleared = await api(manager, RENAME, {"input": {"id": contact_id, "name": None}})
    assert cleared["data"]["updateContact"] == {
        "id": contact_id,
        "name": "Sheena Nelson",
        "profileName": "Sheena Nelson",
        "nameSetByTeam": False,
    }
    await _inbound(api, "Sheena N.")
    contact = await _the_contact(api, manager)
    assert (contact["name"], contact["profileName"]) == ("Sheena N.", "Sheena N.")


async def test_a_contact_the_team_created_keeps_its_name_when_they_write(
    api: Api, channel: WhatsAppAccount, admin: Actor
) -> None:
    """Given a contact the team created with a name, when they first write, then the
    name stays and their profile name is recorded beside it."""
    created = await api(
        admin, CREATE, {"input": {"phoneNumber": f"+{wh.CUSTOMER_WA_ID}", "name": "Ms Nelson"}}
    )
    assert created["data"]["createContact"]["nameSetByTeam"] is True
    assert created["data"]["createContact"]["profileName"] is None
    await _inbound(api, "Sheena Nelson")
    contact = await _the_contact(api, admin)
    assert (contact["name"], contact["profileName"]) == ("Ms Nelson", "Sheena Nelson")


async def test_searches_match_the_teams_name_and_the_profile_name(
    api: Api, channel: WhatsAppAccount, manager: Actor
) -> None:
    """Given a renamed contact, when contacts and conversations are searched by either
    name, then the contact and its conversation are found."""
    await _inbound(api, "Sheena Nelson")
    contact_id = (await _the_contact(api, manager))["id"]
    await api(manager, RENAME, {"input": {"id": contact_id, "name": "Ms VIP"}})
    for term in ("ms vip", "SHEENA"):
        body = await api(manager, NAMES, {"search": term})
        assert node_ids(body, "contacts") == [contact_id], term
        conversations = await api(manager, CONVERSATIONS, {"search": term})
        assert len(node_ids(conversations, "conversations")) == 1, term
    nothing = await api(manager, NAMES, {"search": "nobody"})
    assert node_ids(nothing, "contacts") == []
    assert codes(nothing) == []


async def test_the_migration_counts_existing_names_as_the_teams(
    database_urls: DatabaseUrls, db: Database, org: Organization
) -> None:
    """Given contacts stored before profile names existed, one named and one not,
    when the migration runs, then the named one keeps its name as the team's (no
    profile name will replace it) and the unnamed one takes the next profile name."""
    await downgrade(database_urls.owner, "0004_inbox")
    contacts = sa.table(
        "contacts",
        sa.column("org_id", sa.Uuid()),
        sa.column("id", sa.Uuid()),
        sa.column("wa_id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("opted_out", sa.Boolean()),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    named, unnamed = new_id(), new_id()
    owner = Database(database_urls.owner)
    try:
        async with owner.engine.begin() as conn:
            if owner.dialect == "postgresql":  # the revision's own row-level security
                await conn.execute(
                    sa.text("SELECT set_config('app.org_id', :org, true)"), {"org": str(org.id)}
                )
            for row_id, wa_id, name in ((named, "4930111", "Chosen"), (unnamed, "4930222", None)):
                await conn.execute(
                    sa.insert(contacts).values(
                        org_id=org.id,
                        id=row_id,
                        wa_id=wa_id,
                        name=name,
                        opted_out=False,
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
    finally:
        await owner.dispose()
    await migrate(database_urls.owner, app_url=database_urls.app)

    async with db.session(org.id) as session:
        rows = {row.id: row for row in (await session.exec(select(Contact))).all()}
        assert (rows[named].name, rows[named].name_set_by_team) == ("Chosen", True)
        assert (rows[unnamed].name, rows[unnamed].name_set_by_team) == (None, False)
        for row in rows.values():
            assert record_profile_name(row, "Profile")
        assert (rows[named].name, rows[unnamed].name) == ("Chosen", "Profile")
