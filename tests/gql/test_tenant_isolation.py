"""Another workspace's ids, everywhere an id is taken: NOT_FOUND, never its data."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, login, tokens_for, without_cost
from tests.fixtures.factories import Actor, create_membership, create_user
from tests.fixtures.id_operations import MALFORMED_IDS
from weflux.db import Database
from weflux.gql.view import GraphQLApp
from weflux.ids import encode_global_id
from weflux.models import (
    AuditEvent,
    AuthSession,
    Invitation,
    Membership,
    Organization,
    Role,
    utcnow,
)
from weflux.pagination import encode_cursor

UPDATE_ROLE = """mutation ($id: ID!) {
  updateMemberRole(input: {memberId: $id, role: AGENT}) { id role user { email } } }"""
REMOVE = "mutation ($id: ID!) { removeMember(memberId: $id) }"
REVOKE = "mutation ($id: ID!) { revokeSession(id: $id) { id revokedAt } }"
SESSIONS = "query ($id: ID) { sessions(memberId: $id) { id ipAddress userAgent } }"
NODE = """query ($id: ID!) { node(id: $id) {
  id __typename
  ... on Member { role user { email name } organization { name } }
  ... on Organization { name }
  ... on Session { ipAddress userAgent }
  ... on Invitation { email name }
  ... on AuditEvent { action targetId actor { id } }
} }"""
MEMBERS = "{ members { id user { email } organization { id name } } }"
AUDIT = """query ($after: String) { auditEvents(first: 100, after: $after) {
  edges { node { id action targetId actor { id user { email } } } } } }"""

# Every operation that takes an id, as (name, query, the field answering).
ID_TAKERS = [
    ("updateMemberRole", UPDATE_ROLE, "updateMemberRole"),
    ("removeMember", REMOVE, "removeMember"),
    ("revokeSession", REVOKE, "revokeSession"),
    ("sessions(memberId:)", SESSIONS, "sessions"),
    ("node(id:)", NODE, "node"),
]


def gid(type_name: str, row_id: uuid.UUID) -> str:
    return encode_global_id(type_name, row_id)


@dataclass
class Victim:
    """Globex: what an Acme member must never reach."""

    org: Organization
    admin: Actor
    token: str
    session_id: uuid.UUID
    invitation_id: uuid.UUID
    audit_event_id: uuid.UUID

    def ids(self) -> dict[str, str]:
        return {
            "Member": gid("Member", self.admin.membership.id),
            "Organization": gid("Organization", self.org.id),
            "Session": gid("Session", self.session_id),
            "Invitation": gid("Invitation", self.invitation_id),
            "AuditEvent": gid("AuditEvent", self.audit_event_id),
            "User": gid("User", self.admin.user.id),  # a member of Globex only
        }

    def secrets(self) -> list[str]:
        """Strings that would betray a leak of the victim's data."""
        return [self.org.name, self.admin.user.email, self.admin.user.name, "invitee@globex"]


@pytest.fixture
async def victim(
    client: httpx.AsyncClient, db: Database, other_org: Organization, other_admin: Actor
) -> Victim:
    token = (await tokens_for(client, other_admin))["accessToken"]
    async with db.session(other_org.id) as session:
        invitation = Invitation(
            email="invitee@globex.example",
            name="Globex Invitee",
            role=Role.MANAGER,
            token_hash=uuid.uuid4().hex * 2,
            expires_at=utcnow() + timedelta(days=7),
        )
        session.add(invitation)
        await session.flush()
        [session_id] = (
            await session.exec(
                select(AuthSession.id).where(AuthSession.membership_id == other_admin.membership.id)
            )
        ).all()
        event = (await session.exec(select(AuditEvent))).first()
        assert event is not None
    return Victim(
        org=other_org,
        admin=other_admin,
        token=token,
        session_id=session_id,
        invitation_id=invitation.id,
        audit_event_id=event.id,
    )


async def victim_untouched(client: httpx.AsyncClient, db: Database, victim: Victim) -> None:
    """The victim's admin, session and invitation are as they were."""
    async with db.session(victim.org.id) as session:
        membership = await session.get(Membership, victim.admin.membership.id)
        auth_session = await session.get(AuthSession, victim.session_id)
        invitation = await session.get(Invitation, victim.invitation_id)
    assert membership is not None
    assert membership.role == Role.ADMIN
    assert auth_session is not None
    assert auth_session.revoked_at is None
    assert invitation is not None
    viewer = await gql(client, victim.token, "{ viewer { role } }")
    assert without_cost(viewer.json()) == {"data": {"viewer": {"role": "ADMIN"}}}


def assert_not_found(response: httpx.Response, field: str, victim: Victim | None = None) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert error_codes(response) == ["NOT_FOUND"], body
    assert body.get("data") in (None, {field: None}), body
    if victim is not None:
        for secret in victim.secrets():
            assert secret not in response.text


# --- another workspace's ids -------------------------------------------------------------


FOREIGN_TYPES = ["Member", "Organization", "Session", "Invitation", "AuditEvent", "User"]


@pytest.mark.parametrize(("name", "query", "field"), ID_TAKERS, ids=[t[0] for t in ID_TAKERS])
async def test_another_workspaces_ids_are_not_found(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    agent: Actor,
    victim: Victim,
    name: str,
    query: str,
    field: str,
) -> None:
    # Given an Admin and an Agent of Acme, and the ids of Globex's objects of every type
    for attacker in (admin, agent):
        token = (await tokens_for(client, attacker))["accessToken"]
        for type_name in FOREIGN_TYPES:
            # When they pass one wherever an id is taken
            response = await gql(client, token, query, {"id": victim.ids()[type_name]})
            # Then NOT_FOUND (an Agent may be FORBIDDEN before any look-up), nothing leaks
            codes = error_codes(response)
            if attacker is agent and codes == ["FORBIDDEN"]:
                assert name in ("updateMemberRole", "removeMember", "sessions(memberId:)")
                assert response.json()["data"] is None
                for secret in victim.secrets():
                    assert secret not in response.text
            else:
                assert_not_found(response, field, victim)
    # And Globex is untouched
    await victim_untouched(client, db, victim)


MALFORMED = MALFORMED_IDS | {"user (no member)": ""}  # filled in per test: a user of no workspace


async def test_malformed_ids_are_not_found_never_500(
    client: httpx.AsyncClient, db: Database, admin: Actor, agent: Actor
) -> None:
    # Given an Admin, an Agent logged in, and a user who belongs to no workspace
    async with db.session() as session:
        loner = await create_user(session)
    token = (await tokens_for(client, admin))["accessToken"]
    agent_token = (await tokens_for(client, agent))["accessToken"]
    for name, query, field in ID_TAKERS:
        for kind, value in MALFORMED.items():
            if kind == "user (no member)":
                value = gid("User", loner.id)
            # When the Admin passes a malformed id wherever an id is taken
            response = await gql(client, token, query, {"id": value})
            # Then NOT_FOUND with HTTP 200, not a masked 500
            try:
                assert_not_found(response, field)
            except AssertionError as error:
                raise AssertionError(f"{name} with a {kind} id: {response.text}") from error
    # And nothing happened to anyone
    viewer = await gql(client, agent_token, "{ viewer { role } }")
    assert without_cost(viewer.json()) == {"data": {"viewer": {"role": "AGENT"}}}


WRONG_TYPES = [
    # A real row's uuid under another type's name.
    (UPDATE_ROLE, "updateMemberRole", "Session", "agent_session"),
    (UPDATE_ROLE, "updateMemberRole", "Invitation", "agent_member"),
    (REMOVE, "removeMember", "Organization", "agent_member"),
    (REMOVE, "removeMember", "AuditEvent", "agent_member"),
    (REVOKE, "revokeSession", "Member", "agent_session"),
    (REVOKE, "revokeSession", "Member", "agent_member"),
    (SESSIONS, "sessions", "Session", "agent_member"),
    (SESSIONS, "sessions", "User", "agent_user"),
    (NODE, "node", "Member", "agent_session"),
    (NODE, "node", "Session", "agent_member"),
]


async def test_ids_of_the_wrong_type_are_not_found(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
) -> None:
    # Given an Admin and an Agent of the same workspace, the Agent logged in
    agent_token = (await tokens_for(client, agent))["accessToken"]
    async with db.session(org.id) as session:
        [agent_session] = (
            await session.exec(
                select(AuthSession.id).where(AuthSession.membership_id == agent.membership.id)
            )
        ).all()
    rows = {
        "agent_member": agent.membership.id,
        "agent_session": agent_session,
        "agent_user": agent.user.id,
    }
    token = (await tokens_for(client, admin))["accessToken"]
    for query, field, type_name, row in WRONG_TYPES:
        # When the Admin names a real row under the wrong type
        response = await gql(client, token, query, {"id": gid(type_name, rows[row])})
        # Then NOT_FOUND
        try:
            assert_not_found(response, field)
        except AssertionError as error:
            raise AssertionError(f"{field} with {type_name}:{row}: {response.text}") from error
    # And the Agent is untouched
    viewer = await gql(client, agent_token, "{ viewer { role } }")
    assert without_cost(viewer.json()) == {"data": {"viewer": {"role": "AGENT"}}}


# --- lists -----------------------------------------------------------------------------


async def test_members_never_lists_another_workspaces_members(
    client: httpx.AsyncClient,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    victim: Victim,
) -> None:
    ours = {gid("Member", a.membership.id) for a in (admin, manager, agent)}
    # Whatever the role, Acme's list is Acme's members only
    for me in (admin, manager, agent):
        token = (await tokens_for(client, me))["accessToken"]
        response = await gql(client, token, MEMBERS)
        members = response.json()["data"]["members"]
        assert {m["id"] for m in members} == ours
        assert {m["organization"]["id"] for m in members} == {gid("Organization", org.id)}
        for secret in victim.secrets():
            assert secret not in response.text
    # And Globex's list is Globex's
    theirs = (await gql(client, victim.token, MEMBERS)).json()["data"]["members"]
    assert [m["id"] for m in theirs] == [gid("Member", victim.admin.membership.id)]


async def test_audit_events_never_show_another_workspaces_events(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    agent: Actor,
    victim: Victim,
) -> None:
    # Given activity in both workspaces (logins, an invitation, a failed login)
    token = (await tokens_for(client, admin))["accessToken"]
    await tokens_for(client, agent)
    invite = """mutation { inviteMember(input: {email: "x@globex.example", name: "X",
                role: AGENT}) { token } }"""
    assert "errors" not in (await gql(client, victim.token, invite)).json()
    assert (await login(client, victim.admin.user.email, "wrong password")).status_code == 401
    async with db.session(victim.org.id) as session:
        theirs = {e.id for e in (await session.exec(select(AuditEvent))).all()}
    async with db.session(org.id) as session:
        ours = {e.id for e in (await session.exec(select(AuditEvent))).all()}
    assert theirs
    assert ours
    # When Acme's Admin reads the trail, from the start and from a cursor of Globex's
    seen: set[str] = set()
    texts = []
    for after in [None, encode_cursor(max(theirs)), encode_cursor(min(theirs))]:
        response = await gql(client, token, AUDIT, {"after": after})
        assert "errors" not in response.json(), response.text
        texts.append(response.text)
        seen |= {e["node"]["id"] for e in response.json()["data"]["auditEvents"]["edges"]}
    # Then only Acme's events appear
    assert seen
    assert seen <= {gid("AuditEvent", e) for e in ours}
    for text in texts:
        for secret in [*victim.secrets(), "x@globex.example"]:
            assert secret not in text


# --- one user, two workspaces ----------------------------------------------------------


async def test_a_member_of_two_workspaces_acts_in_the_one_of_the_token_only(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    victim: Victim,
) -> None:
    # Given Acme's Admin, who is also an Agent of Globex
    async with db.session(victim.org.id) as session:
        globex_membership = await create_membership(session, user=admin.user, role=Role.AGENT)
    acme = (await tokens_for(client, admin))["accessToken"]
    response = await login(
        client, admin.user.email, organizationId=gid("Organization", victim.org.id)
    )
    globex = response.json()["accessToken"]
    # When they use their Acme (Admin) token on their Globex membership
    for query, field in [(NODE, "node"), (SESSIONS, "sessions"), (UPDATE_ROLE, "updateMemberRole")]:
        answer = await gql(client, acme, query, {"id": gid("Member", globex_membership.id)})
        # Then it is NOT_FOUND: an Acme token reaches Acme only
        assert_not_found(answer, field)
    # And with the Globex token they are an Agent there, nothing more
    viewer = (await gql(client, globex, "{ viewer { id role } }")).json()["data"]["viewer"]
    assert viewer == {"id": gid("Member", globex_membership.id), "role": "AGENT"}
    assert error_codes(await gql(client, globex, AUDIT)) == ["FORBIDDEN"]
    answer = await gql(client, globex, NODE, {"id": gid("Member", admin.membership.id)})
    assert_not_found(answer, "node")


async def test_concurrent_requests_never_borrow_each_others_identity(
    client: httpx.AsyncClient,
    admin: Actor,
    victim: Victim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given requests of two workspaces in flight at once, each pausing before its
    # context is built (so that all of them have been authenticated by then)
    original = GraphQLApp.get_context
    acme = (await tokens_for(client, admin))["accessToken"]
    tokens = [acme, victim.token] * 5
    all_in_flight = asyncio.Barrier(len(tokens))

    async def slow_context(self: GraphQLApp, request: Any, response: Any = None) -> Any:
        async with asyncio.timeout(10):
            await all_in_flight.wait()
        return await original(self, request, response)

    monkeypatch.setattr(GraphQLApp, "get_context", slow_context)
    # When they run concurrently
    responses = await asyncio.gather(
        *(gql(client, token, "{ viewer { id } organization { name } }") for token in tokens)
    )
    # Then each one is answered as its own caller
    expected = {
        acme: {
            "viewer": {"id": gid("Member", admin.membership.id)},
            "organization": {"name": "Acme"},
        },
        victim.token: {
            "viewer": {"id": gid("Member", victim.admin.membership.id)},
            "organization": {"name": victim.org.name},
        },
    }
    for token, response in zip(tokens, responses, strict=True):
        assert without_cost(response.json()) == {"data": expected[token]}
