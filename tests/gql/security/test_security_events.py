"""securityEvents, acknowledgeSecurityEvent and securityEventAdded (issue 13, item 2):
ADMIN only, confined to the workspace, never a secret."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.factories import Actor, create_contact
from tests.fixtures.live import until_listening
from tests.fixtures.ws import GraphQLSocket, acts_as
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Organization
from weflux.realtime.broker import InProcessBroker
from weflux.secops.events import SecurityKind, record_security_event
from weflux.services.audit import RequestMeta

EVENTS = """query ($severity: SecuritySeverity) {
  securityEvents(first: 10, severity: $severity) {
    edges { node { id kind severity summary ipAddress userAgent acknowledgedAt
                   actor { id } acknowledgedBy { id } } } } }"""
ACKNOWLEDGE = """mutation ($id: ID!) {
  acknowledgeSecurityEvent(id: $id) { id acknowledgedAt acknowledgedBy { id } } }"""
ADDED = "subscription { securityEventAdded { id kind severity summary } }"
GRANT = """mutation ($input: UpdateMemberRoleInput!) { updateMemberRole(input: $input) { id } }"""


async def raise_events(db: Database, org: Organization, actor: Actor) -> None:
    broker = InProcessBroker()
    async with db.session(org.id) as session:
        for kind in (SecurityKind.NEW_DEVICE, SecurityKind.BRUTE_FORCE):
            await record_security_event(
                session,
                broker,
                kind,
                f"{kind} seen",
                meta=RequestMeta(ip="192.0.2.1", user_agent="Browser/1.0"),
            )


def nodes(response: httpx.Response) -> list[dict[str, object]]:
    body = response.json()
    assert "errors" not in body, body
    return [edge["node"] for edge in body["data"]["securityEvents"]["edges"]]


async def test_an_admin_lists_filters_and_acknowledges_security_events(
    client: httpx.AsyncClient, db: Database, org: Organization, admin: Actor
) -> None:
    await raise_events(db, org, admin)
    token = await token_for(client, admin)
    listed = nodes(await gql(client, token, EVENTS))
    assert [n["kind"] for n in listed] == ["auth.brute_force", "auth.new_device"]  # newest first
    assert listed[0]["userAgent"] == "Browser/1.0"
    high = nodes(await gql(client, token, EVENTS, {"severity": "HIGH"}))
    assert [n["kind"] for n in high] == ["auth.brute_force"]
    response = await gql(client, token, ACKNOWLEDGE, {"id": high[0]["id"]})
    acknowledged = response.json()["data"]["acknowledgeSecurityEvent"]
    assert acknowledged["acknowledgedAt"] is not None
    assert acknowledged["acknowledgedBy"]["id"] == encode_global_id("Member", admin.membership.id)
    again = await gql(client, token, ACKNOWLEDGE, {"id": high[0]["id"]})
    assert (
        again.json()["data"]["acknowledgeSecurityEvent"]["acknowledgedAt"]
        == (acknowledged["acknowledgedAt"])
    )


async def test_managers_and_agents_may_not_see_or_acknowledge_security_events(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
) -> None:
    await raise_events(db, org, admin)
    event_id = nodes(await gql(client, await token_for(client, admin), EVENTS))[0]["id"]
    for actor in (manager, agent):
        token = await token_for(client, actor)
        assert error_codes(await gql(client, token, EVENTS)) == ["FORBIDDEN"]
        assert error_codes(await gql(client, token, ACKNOWLEDGE, {"id": event_id})) == ["FORBIDDEN"]
        node = await gql(
            client, token, "query ($id: ID!) { node(id: $id) { id } }", {"id": event_id}
        )
        assert node.json()["data"]["node"] is None


async def test_another_workspaces_admin_sees_nothing_of_them(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    other_admin: Actor,
) -> None:
    await raise_events(db, org, admin)
    event_id = nodes(await gql(client, await token_for(client, admin), EVENTS))[0]["id"]
    token = await token_for(client, other_admin)
    assert nodes(await gql(client, token, EVENTS)) == []
    assert error_codes(await gql(client, token, ACKNOWLEDGE, {"id": event_id})) == ["NOT_FOUND"]


async def test_a_new_security_event_reaches_a_subscribed_admin(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    admin: Actor,
    manager: Actor,
) -> None:
    """Given an Admin subscribed to securityEventAdded
    When another member is made Admin
    Then the Admin receives the member.admin_granted event."""
    token = await token_for(http, admin)
    socket = await GraphQLSocket.connect(live, token)
    operation = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    target = encode_global_id("Member", manager.membership.id)
    response = await gql(http, token, GRANT, {"input": {"memberId": target, "role": "ADMIN"}})
    assert "errors" not in response.json(), response.text
    frame = await socket.next(operation)
    assert frame["type"] == "next", frame
    event = frame["payload"]["data"]["securityEventAdded"]
    assert (event["kind"], event["severity"]) == ("member.admin_granted", "HIGH")
    await socket.close()


async def test_a_demoted_admin_stops_receiving_security_events(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    admin: Actor,
    manager: Actor,
    agent: Actor,
) -> None:
    """Given a second Admin subscribed to securityEventAdded
    When they are made a Manager, and then a security event is raised
    Then their subscription ends FORBIDDEN instead of sending the event."""
    token = await token_for(http, admin)
    second = encode_global_id("Member", manager.membership.id)
    made_admin = await gql(http, token, GRANT, {"input": {"memberId": second, "role": "ADMIN"}})
    assert "errors" not in made_admin.json(), made_admin.text
    socket = await GraphQLSocket.connect(live, await token_for(http, manager))
    operation = await socket.subscribe(ADDED)
    await until_listening(live_app, 1)
    demoted = await gql(http, token, GRANT, {"input": {"memberId": second, "role": "MANAGER"}})
    assert "errors" not in demoted.json(), demoted.text
    await acts_as(socket, "MANAGER")

    target = encode_global_id("Member", agent.membership.id)
    raised = await gql(http, token, GRANT, {"input": {"memberId": target, "role": "ADMIN"}})
    assert "errors" not in raised.json(), raised.text

    frame = await socket.next(operation)
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"].get("errors", [])
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], frame
    await socket.close()


async def test_an_agent_may_not_subscribe_to_security_events(
    live: str, http: httpx.AsyncClient, agent: Actor
) -> None:
    socket = await GraphQLSocket.connect(live, await token_for(http, agent))
    operation = await socket.subscribe(ADDED)
    frame = await socket.next(operation)
    errors = frame["payload"] if frame["type"] == "error" else frame["payload"]["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"]
    await socket.close()


DATA_REQUESTS = (
    ("mutation($id: ID!) { eraseContact(contactId: $id) { id } }", True),
    ("mutation($id: ID!) { exportContactData(contactId: $id) { id } }", True),
    ("mutation { requestWorkspaceExport { id } }", False),
    (
        'mutation { requestWorkspaceDeletion(confirmOrganizationName: "Acme") { id } }',
        False,
    ),
)


async def test_data_requests_raise_their_security_events(
    client: httpx.AsyncClient, db: Database, org: Organization, admin: Actor
) -> None:
    """Given an Admin, when they erase a contact, export it, export the workspace and
    request its deletion, then each raises exactly one security event of its kind (the
    deletion, CRITICAL, is alerted), seen by an Admin who logs in again."""
    async with db.session(org.id) as session:
        contact = await create_contact(session)
        other = await create_contact(session)
    token = await token_for(client, admin)
    for index, (document, about_contact) in enumerate(DATA_REQUESTS):
        subject = contact if index == 0 else other
        variables = {"id": encode_global_id("Contact", subject.id)} if about_contact else None
        response = await gql(client, token, document, variables)
        assert "errors" not in response.json(), response.text
    listed = nodes(await gql(client, await token_for(client, admin), EVENTS))
    kinds = sorted(str(n["kind"]) for n in listed)
    assert kinds == [
        "data.erasure_requested",
        "data.export_requested",
        "data.export_requested",
        "data.workspace_deletion_requested",
    ]
    critical = [n for n in listed if n["severity"] == "CRITICAL"]
    assert [n["kind"] for n in critical] == ["data.workspace_deletion_requested"]
