"""`incidents` over GraphQL: an Admin sees those that affect their workspace, nobody else
sees them, and no other workspace's Admin learns of them."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.factories import Actor
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Incident, Organization
from weflux.secops import incidents

pytestmark = pytest.mark.usefixtures("dialect")

INCIDENTS = """{ incidents { id title status discoveredAt notifyBy notifiedAt
  postMortemDueAt postMortemUrl } }"""
NODE = "query ($id: ID!) { node(id: $id) { ... on Incident { id title } } }"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


async def open_for(owner_db: Database, org: Organization, title: str) -> Incident:
    async with owner_db.session(all_workspaces="test: open an incident") as session:
        return await incidents.open_incident(
            session, title=title, discovered_at=T0, org_ids=[org.id]
        )


async def test_an_admin_sees_the_incidents_of_their_workspace_only(
    client: httpx.AsyncClient,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    other_admin: Actor,
) -> None:
    ours = await open_for(owner_db, org, "Ours")
    theirs = await open_for(owner_db, other_org, "Theirs")

    response = await gql(client, await token_for(client, admin), INCIDENTS)
    assert response.json()["data"]["incidents"] == [
        {
            "id": encode_global_id("Incident", ours.id),
            "title": "Ours",
            "status": "OPEN",
            "discoveredAt": "2026-12-01T09:00:00+00:00",
            "notifyBy": "2026-12-04T09:00:00+00:00",
            "notifiedAt": None,
            "postMortemDueAt": "2026-12-15T09:00:00+00:00",
            "postMortemUrl": None,
        }
    ]
    other_token = await token_for(client, other_admin)
    response = await gql(client, other_token, INCIDENTS)
    assert [i["title"] for i in response.json()["data"]["incidents"]] == ["Theirs"]
    response = await gql(client, other_token, NODE, {"id": encode_global_id("Incident", ours.id)})
    assert error_codes(response) == ["NOT_FOUND"]
    response = await gql(client, other_token, NODE, {"id": encode_global_id("Incident", theirs.id)})
    assert response.json()["data"]["node"]["title"] == "Theirs"


async def test_only_admins_may_read_incidents(
    client: httpx.AsyncClient,
    owner_db: Database,
    org: Organization,
    manager: Actor,
    agent: Actor,
) -> None:
    incident = await open_for(owner_db, org, "Ours")
    for member in (manager, agent):
        token = await token_for(client, member)
        assert error_codes(await gql(client, token, INCIDENTS)) == ["FORBIDDEN"]
        global_id = encode_global_id("Incident", incident.id)
        response = await gql(client, token, NODE, {"id": global_id})
        assert error_codes(response) == ["NOT_FOUND"]
