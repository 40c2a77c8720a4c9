"""Who may do what over GraphQL: every cell of CONTRACT §3 that exists today (identity).

Each cell is attacked by a real member of the role, through the public API, and its
side effect (or the absence of one) is checked in the database afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from tests.fixtures import REPO_ROOT
from tests.fixtures.api import error_codes, gql, login, tokens_for, without_cost
from tests.fixtures.factories import PASSWORD, Actor, create_actor
from weflux.auth.permissions import render_matrix
from weflux.db import Database
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
from weflux.services import members as member_service

OK = "ok"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
CONFLICT = "CONFLICT"

NEW_PASSWORD = "Another-lilac-Ferry-2741"

VIEWER = "{ viewer { id role user { email } organization { id } } }"
ORGANIZATION = "{ organization { id name } }"
MEMBERS = "{ members { id role user { email } } }"
INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { invitation { id email role } token } }"""
UPDATE_ROLE = """mutation ($input: UpdateMemberRoleInput!) {
  updateMemberRole(input: $input) { id role } }"""
REMOVE = "mutation ($id: ID!) { removeMember(memberId: $id) }"
SESSIONS = "query ($memberId: ID) { sessions(memberId: $memberId) { id current revokedAt } }"
REVOKE = "mutation ($id: ID!) { revokeSession(id: $id) { id revokedAt current } }"
CHANGE_PASSWORD = """mutation ($input: ChangePasswordInput!) { changePassword(input: $input) }"""
AUDIT = "{ auditEvents(first: 50) { edges { node { id action } } pageInfo { hasNextPage } } }"
NODE = "query ($id: ID!) { node(id: $id) { id __typename } }"


def gid(type_name: str, row_id: uuid.UUID) -> str:
    return encode_global_id(type_name, row_id)


def outcome(response: httpx.Response, expected: str, field_name: str) -> Any:
    """The field's data when `expected` is OK; otherwise assert exactly that error code."""
    assert response.status_code == 200, response.text
    body = response.json()
    if expected == OK:
        assert "errors" not in body, body
        return body["data"][field_name]
    assert error_codes(response) == [expected], body
    assert body.get("data") in (None, {field_name: None}), body
    return None


# --- the team under attack ------------------------------------------------------------


@dataclass
class Team:
    client: httpx.AsyncClient
    db: Database
    org: Organization
    actors: dict[Role, Actor]
    target: Actor  # an Agent the others act upon
    _tokens: dict[uuid.UUID, str] = field(default_factory=dict)

    async def token(self, actor: Actor) -> str:
        if actor.membership.id not in self._tokens:
            self._tokens[actor.membership.id] = (await tokens_for(self.client, actor))[
                "accessToken"
            ]
        return self._tokens[actor.membership.id]

    async def call(
        self, actor: Actor, query: str, variables: dict[str, Any] | None = None
    ) -> httpx.Response:
        return await gql(self.client, await self.token(actor), query, variables)

    async def works(self, token: str) -> bool:
        """Whether a token is still accepted (HTTP 401 when it is not)."""
        response = await gql(self.client, token, "{ viewer { id } }")
        assert response.status_code in (200, 401), response.text
        return response.status_code == 200

    async def role_of(self, membership_id: uuid.UUID) -> Role | None:
        async with self.db.session(self.org.id) as session:
            row = await session.get(Membership, membership_id)
            return row.role if row else None

    async def live_sessions(self, membership_id: uuid.UUID) -> list[uuid.UUID]:
        async with self.db.session(self.org.id) as session:
            rows = await session.exec(
                select(AuthSession.id).where(
                    AuthSession.membership_id == membership_id,
                    col(AuthSession.revoked_at).is_(None),
                )
            )
            return list(rows.all())

    async def invitations_for(self, email: str) -> list[Invitation]:
        async with self.db.session(self.org.id) as session:
            rows = await session.exec(select(Invitation).where(Invitation.email == email))
            return list(rows.all())


@pytest.fixture
async def team(
    client: httpx.AsyncClient,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    other_agent: Actor,
) -> Team:
    return Team(
        client=client,
        db=db,
        org=org,
        actors={Role.ADMIN: admin, Role.MANAGER: manager, Role.AGENT: agent},
        target=other_agent,
    )


# --- the operations, each checking its own side effect ---------------------------------

Operation = Callable[[Team, Role, str], Awaitable[None]]


async def read_viewer(t: Team, role: Role, expected: str) -> None:
    me = t.actors[role]
    data = outcome(await t.call(me, VIEWER), expected, "viewer")
    assert data["id"] == gid("Member", me.membership.id)
    assert data["role"] == role.value
    assert data["user"]["email"] == me.user.email
    assert data["organization"]["id"] == gid("Organization", t.org.id)


async def read_organization(t: Team, role: Role, expected: str) -> None:
    data = outcome(await t.call(t.actors[role], ORGANIZATION), expected, "organization")
    assert data == {"id": gid("Organization", t.org.id), "name": t.org.name}


async def read_members(t: Team, role: Role, expected: str) -> None:
    data = outcome(await t.call(t.actors[role], MEMBERS), expected, "members")
    everyone = [*t.actors.values(), t.target]
    assert {m["id"] for m in data} == {gid("Member", a.membership.id) for a in everyone}


def invite(invitee_role: Role) -> Operation:
    async def run(t: Team, role: Role, expected: str) -> None:
        email = f"new-{invitee_role.value.lower()}@acme.example"
        variables = {"input": {"email": email, "name": "Newcomer", "role": invitee_role.value}}
        data = outcome(await t.call(t.actors[role], INVITE, variables), expected, "inviteMember")
        stored = await t.invitations_for(email)
        if expected == OK:
            assert data["invitation"]["role"] == invitee_role.value
            assert data["invitation"]["email"] == email
            assert len(data["token"]) >= 32
            assert [i.role for i in stored] == [invitee_role]
            assert stored[0].token_hash != data["token"]  # only a hash is kept
        else:
            assert stored == []

    return run


def change_role(whom: str, new_role: Role) -> Operation:
    async def run(t: Team, role: Role, expected: str) -> None:
        subject = t.actors[role] if whom == "self" else t.target
        before = subject.membership.role
        subject_token = await t.token(subject)
        variables = {
            "input": {"memberId": gid("Member", subject.membership.id), "role": new_role.value}
        }
        data = outcome(
            await t.call(t.actors[role], UPDATE_ROLE, variables), expected, "updateMemberRole"
        )
        after = await t.role_of(subject.membership.id)
        if expected == OK:
            assert data == {"id": gid("Member", subject.membership.id), "role": new_role.value}
            assert after == new_role
            # Effective on the subject's very next request.
            viewer = (await gql(t.client, subject_token, VIEWER)).json()
            assert viewer["data"]["viewer"]["role"] == new_role.value
        else:
            assert after == before

    return run


async def remove_member(t: Team, role: Role, expected: str) -> None:
    victim_token = await t.token(t.target)
    variables = {"id": gid("Member", t.target.membership.id)}
    data = outcome(await t.call(t.actors[role], REMOVE, variables), expected, "removeMember")
    if expected == OK:
        assert data == variables["id"]  # the removed id, for the client's cache to evict
        assert await t.role_of(t.target.membership.id) is None
        assert not await t.works(victim_token)
    else:
        assert await t.role_of(t.target.membership.id) == Role.AGENT
        assert await t.works(victim_token)


def read_sessions(whose: str) -> Operation:
    async def run(t: Team, role: Role, expected: str) -> None:
        me = t.actors[role]
        await t.token(me)
        subject = t.target if whose == "other" else me
        await t.token(subject)
        variables: dict[str, Any] = {}
        if whose != "implicit":
            variables["memberId"] = gid("Member", subject.membership.id)
        data = outcome(await t.call(me, SESSIONS, variables), expected, "sessions")
        if expected == OK:
            expected_ids = {gid("Session", s) for s in await t.live_sessions(subject.membership.id)}
            assert {s["id"] for s in data} == expected_ids
            assert [s["current"] for s in data] == [subject is me] * len(data)

    return run


async def revoke_own_session(t: Team, role: Role, expected: str) -> None:
    me = t.actors[role]
    current = await t.token(me)
    second = (await tokens_for(t.client, me))["accessToken"]
    listed = (await gql(t.client, second, SESSIONS)).json()["data"]["sessions"]
    [second_id] = [s["id"] for s in listed if s["current"]]
    data = outcome(await t.call(me, REVOKE, {"id": second_id}), expected, "revokeSession")
    assert data["id"] == second_id
    assert data["revokedAt"] is not None
    assert data["current"] is False
    assert not await t.works(second)
    assert await t.works(current)


async def revoke_others_session(t: Team, role: Role, expected: str) -> None:
    victim_token = await t.token(t.target)
    [victim_session] = await t.live_sessions(t.target.membership.id)
    variables = {"id": gid("Session", victim_session)}
    data = outcome(await t.call(t.actors[role], REVOKE, variables), expected, "revokeSession")
    if expected == OK:
        assert data["id"] == variables["id"]
        assert data["revokedAt"] is not None
        assert not await t.works(victim_token)
    else:
        assert await t.live_sessions(t.target.membership.id) == [victim_session]
        assert await t.works(victim_token)


async def change_own_password(t: Team, role: Role, expected: str) -> None:
    me = t.actors[role]
    current = await t.token(me)
    other = await tokens_for(t.client, me)
    variables = {"input": {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}}
    assert outcome(await t.call(me, CHANGE_PASSWORD, variables), expected, "changePassword")
    # Every OTHER session ends at once; the current one goes on.
    assert not await t.works(other["accessToken"])
    refreshed = await t.client.post("/auth/refresh", json={"refreshToken": other["refreshToken"]})
    assert refreshed.status_code == 401
    assert await t.works(current)
    assert (await login(t.client, me.user.email, PASSWORD)).status_code == 401
    assert (await login(t.client, me.user.email, NEW_PASSWORD)).status_code == 200


async def read_audit_events(t: Team, role: Role, expected: str) -> None:
    await t.token(t.target)  # a login: at least one event in the trail
    data = outcome(await t.call(t.actors[role], AUDIT), expected, "auditEvents")
    if expected == OK:
        assert data["edges"]
        assert "auth.login.succeeded" in {e["node"]["action"] for e in data["edges"]}


async def node_of_members_session(t: Team, role: Role, expected: str) -> None:
    await t.token(t.target)
    [victim_session] = await t.live_sessions(t.target.membership.id)
    variables = {"id": gid("Session", victim_session)}
    data = outcome(await t.call(t.actors[role], NODE, variables), expected, "node")
    if expected == OK:
        assert data == {"id": variables["id"], "__typename": "Session"}


async def node_of_own_session(t: Team, role: Role, expected: str) -> None:
    me = t.actors[role]
    await t.token(me)
    [mine] = await t.live_sessions(me.membership.id)
    data = outcome(await t.call(me, NODE, {"id": gid("Session", mine)}), expected, "node")
    assert data == {"id": gid("Session", mine), "__typename": "Session"}


async def node_of_member(t: Team, role: Role, expected: str) -> None:
    target_id = gid("Member", t.target.membership.id)
    data = outcome(await t.call(t.actors[role], NODE, {"id": target_id}), expected, "node")
    assert data == {"id": target_id, "__typename": "Member"}


async def node_of_invitation(t: Team, role: Role, expected: str) -> None:
    async with t.db.session(t.org.id) as session:
        invitation = Invitation(
            email="pending@acme.example",
            name="Pending",
            role=Role.AGENT,
            token_hash=uuid.uuid4().hex * 2,
            expires_at=utcnow() + timedelta(days=7),
        )
        session.add(invitation)
    variables = {"id": gid("Invitation", invitation.id)}
    data = outcome(await t.call(t.actors[role], NODE, variables), expected, "node")
    if expected == OK:
        assert data == {"id": variables["id"], "__typename": "Invitation"}


async def node_of_audit_event(t: Team, role: Role, expected: str) -> None:
    await t.token(t.target)
    async with t.db.session(t.org.id) as session:
        event = (await session.exec(select(AuditEvent))).first()
        assert event is not None
    variables = {"id": gid("AuditEvent", event.id)}
    data = outcome(await t.call(t.actors[role], NODE, variables), expected, "node")
    if expected == OK:
        assert data == {"id": variables["id"], "__typename": "AuditEvent"}


# --- the matrix -------------------------------------------------------------------------

ADMIN, MANAGER, AGENT = Role.ADMIN, Role.MANAGER, Role.AGENT

# operation: (what an ADMIN gets, what a MANAGER gets, what an AGENT gets)
MATRIX: dict[str, tuple[Operation, tuple[str, str, str]]] = {
    "read viewer": (read_viewer, (OK, OK, OK)),
    "read organization": (read_organization, (OK, OK, OK)),
    "read members": (read_members, (OK, OK, OK)),
    "node(id:) of a member": (node_of_member, (OK, OK, OK)),
    "invite an ADMIN": (invite(ADMIN), (OK, FORBIDDEN, FORBIDDEN)),
    "invite a MANAGER": (invite(MANAGER), (OK, FORBIDDEN, FORBIDDEN)),
    "invite an AGENT": (invite(AGENT), (OK, OK, FORBIDDEN)),
    "node(id:) of an invitation": (node_of_invitation, (OK, OK, NOT_FOUND)),
    "make another member a MANAGER": (change_role("other", MANAGER), (OK, FORBIDDEN, FORBIDDEN)),
    "make another member an ADMIN": (change_role("other", ADMIN), (OK, FORBIDDEN, FORBIDDEN)),
    "make oneself an ADMIN": (change_role("self", ADMIN), (OK, FORBIDDEN, FORBIDDEN)),
    "remove a member": (remove_member, (OK, FORBIDDEN, FORBIDDEN)),
    "read own sessions": (read_sessions("implicit"), (OK, OK, OK)),
    "read own sessions by memberId": (read_sessions("self"), (OK, OK, OK)),
    "read another member's sessions": (read_sessions("other"), (OK, FORBIDDEN, FORBIDDEN)),
    "node(id:) of own session": (node_of_own_session, (OK, OK, OK)),
    "node(id:) of another member's session": (
        node_of_members_session,
        (OK, NOT_FOUND, NOT_FOUND),
    ),
    "revoke own session": (revoke_own_session, (OK, OK, OK)),
    "revoke another member's session": (revoke_others_session, (OK, NOT_FOUND, NOT_FOUND)),
    "change own password": (change_own_password, (OK, OK, OK)),
    "read audit events": (read_audit_events, (OK, FORBIDDEN, FORBIDDEN)),
    "node(id:) of an audit event": (node_of_audit_event, (OK, NOT_FOUND, NOT_FOUND)),
}

# Cells that every role passes and that no row-level rule could change run on SQLite
# only (PostgreSQL's row-level security on these reads is covered by the tenant
# isolation tests); every cell that writes or depends on whose row it is runs on both.
SQLITE_ONLY = {
    "read viewer",
    "read organization",
    "read members",
    "node(id:) of a member",
    "read own sessions by memberId",
    "node(id:) of own session",
}

CASES = [
    pytest.param(dialect, name, role, expected, id=f"{dialect}-{name} | {role.value} -> {expected}")
    for name, (_, row) in MATRIX.items()
    for role, expected in zip((ADMIN, MANAGER, AGENT), row, strict=True)
    for dialect in (["sqlite"] if name in SQLITE_ONLY else ["sqlite", "postgresql"])
]


@pytest.mark.parametrize(("dialect", "operation", "role", "expected"), CASES)
async def test_role_matrix(team: Team, operation: str, role: Role, expected: str) -> None:
    # Given a workspace with an Admin, a Manager, an Agent and another Agent (the target)
    run, _ = MATRIX[operation]
    # When a member of `role` attempts the operation, Then they get `expected`
    # (and the side effect happens exactly when it is allowed).
    await run(team, role, expected)


# --- changing one's password: what goes wrong ------------------------------------------


@pytest.mark.parametrize("role", [ADMIN, AGENT])
async def test_change_password_with_a_wrong_current_password_changes_nothing(
    team: Team, role: Role
) -> None:
    # Given a member logged in twice
    me = team.actors[role]
    other = (await tokens_for(team.client, me))["accessToken"]
    # When they give a wrong current password
    variables = {"input": {"currentPassword": PASSWORD + "x", "newPassword": NEW_PASSWORD}}
    response = await team.call(me, CHANGE_PASSWORD, variables)
    # Then BAD_USER_INPUT, the password is unchanged and no session ended
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert response.json()["data"] is None
    assert await team.works(other)
    assert (await login(team.client, me.user.email, PASSWORD)).status_code == 200
    assert (await login(team.client, me.user.email, NEW_PASSWORD)).status_code == 401


@pytest.mark.parametrize(
    ("dialect", "weak"),
    [
        ("postgresql", "password"),
        *[
            ("sqlite", weak)
            for weak in ("password", "short", "admin@acme.example", "1234567890", "")
        ],
    ],
)
async def test_change_password_to_a_weak_one_is_refused_with_details(team: Team, weak: str) -> None:
    # Given a logged-in Admin
    me = team.actors[ADMIN]
    other = (await tokens_for(team.client, me))["accessToken"]
    # When they choose a weak new password
    variables = {"input": {"currentPassword": PASSWORD, "newPassword": weak}}
    response = await team.call(me, CHANGE_PASSWORD, variables)
    # Then BAD_USER_INPUT with per-field details, and nothing changes
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    details = error["extensions"]["details"]
    assert details
    assert all(d["field"] and d["message"] for d in details)
    assert await team.works(other)
    assert (await login(team.client, me.user.email, PASSWORD)).status_code == 200


# --- the last Admin --------------------------------------------------------------------


async def _second_admin(db: Database, org: Organization) -> Actor:
    async with db.session(org.id) as session:
        return await create_actor(session, Role.ADMIN, email="admin2@acme.example")


async def _admins(db: Database, org: Organization) -> list[uuid.UUID]:
    async with db.session(org.id) as session:
        rows = await session.exec(select(Membership.id).where(Membership.role == Role.ADMIN))
        return list(rows.all())


@pytest.mark.parametrize("new_role", [MANAGER, AGENT])
async def test_the_only_admin_cannot_demote_themself(
    team: Team, db: Database, org: Organization, new_role: Role
) -> None:
    # Given a workspace with exactly one Admin
    me = team.actors[ADMIN]
    # When they demote themself
    variables = {"input": {"memberId": gid("Member", me.membership.id), "role": new_role.value}}
    response = await team.call(me, UPDATE_ROLE, variables)
    # Then CONFLICT, and they are still the Admin
    assert error_codes(response) == [CONFLICT]
    assert await _admins(db, org) == [me.membership.id]


async def test_the_only_admin_cannot_remove_themself(
    team: Team, db: Database, org: Organization
) -> None:
    me = team.actors[ADMIN]
    response = await team.call(me, REMOVE, {"id": gid("Member", me.membership.id)})
    assert error_codes(response) == [CONFLICT]
    assert await _admins(db, org) == [me.membership.id]
    assert await team.works(await team.token(me))


async def test_with_two_admins_one_can_be_demoted_then_the_other_is_the_last(
    team: Team, db: Database, org: Organization
) -> None:
    # Given two Admins, both logged in
    first = team.actors[ADMIN]
    second = await _second_admin(db, org)
    second_token = await team.token(second)
    # When the first demotes the second
    variables = {"input": {"memberId": gid("Member", second.membership.id), "role": "AGENT"}}
    response = await team.call(first, UPDATE_ROLE, variables)
    # Then it works, and on their next request the second is an Agent
    assert response.json()["data"]["updateMemberRole"]["role"] == "AGENT"
    assert error_codes(await gql(team.client, second_token, AUDIT)) == [FORBIDDEN]
    # And the first, now the last Admin, can neither demote nor remove themself
    variables = {"input": {"memberId": gid("Member", first.membership.id), "role": "MANAGER"}}
    assert error_codes(await team.call(first, UPDATE_ROLE, variables)) == [CONFLICT]
    removal = await team.call(first, REMOVE, {"id": gid("Member", first.membership.id)})
    assert error_codes(removal) == [CONFLICT]
    assert await _admins(db, org) == [first.membership.id]


async def test_with_two_admins_one_can_remove_the_other(
    team: Team, db: Database, org: Organization
) -> None:
    first = team.actors[ADMIN]
    second = await _second_admin(db, org)
    second_token = await team.token(second)
    removed = gid("Member", second.membership.id)
    response = await team.call(first, REMOVE, {"id": removed})
    assert without_cost(response.json()) == {"data": {"removeMember": removed}}
    assert not await team.works(second_token)
    assert await _admins(db, org) == [first.membership.id]


async def test_an_admin_demoted_meanwhile_loses_admin_rights_at_once(
    team: Team, db: Database, org: Organization
) -> None:
    # Given two Admins; the second is demoted by the first
    first = team.actors[ADMIN]
    second = await _second_admin(db, org)
    second_token = await team.token(second)
    variables = {"input": {"memberId": gid("Member", second.membership.id), "role": "AGENT"}}
    assert "errors" not in (await team.call(first, UPDATE_ROLE, variables)).json()
    # When the demoted one, with the token issued while Admin, tries Admin things
    attempts: list[tuple[str, dict[str, Any]]] = [
        (UPDATE_ROLE, {"input": {"memberId": gid("Member", first.membership.id), "role": "AGENT"}}),
        (REMOVE, {"id": gid("Member", first.membership.id)}),
        (
            UPDATE_ROLE,
            {"input": {"memberId": gid("Member", second.membership.id), "role": "ADMIN"}},
        ),
    ]
    # Then every one is FORBIDDEN
    for query, attempt in attempts:
        assert error_codes(await gql(team.client, second_token, query, attempt)) == [FORBIDDEN]
    assert await _admins(db, org) == [first.membership.id]


def _meet_after_reading_the_target(
    monkeypatch: pytest.MonkeyPatch, parties: int = 2
) -> asyncio.Barrier:
    """Make concurrent requests all read their target before any of them goes on."""
    barrier = asyncio.Barrier(parties)
    original = member_service._target

    async def meeting(session: Any, membership_id: uuid.UUID) -> Membership:
        target = await original(session, membership_id)
        with contextlib.suppress(TimeoutError):  # never wait forever for the other one
            await asyncio.wait_for(barrier.wait(), timeout=2)
        return target

    monkeypatch.setattr(member_service, "_target", meeting)
    return barrier


@pytest.mark.parametrize(
    "attack",
    ["demote each other", "demote themselves", "remove each other", "demote and remove"],
)
async def test_concurrent_demotions_leave_an_admin(
    team: Team,
    db: Database,
    org: Organization,
    dialect: str,
    monkeypatch: pytest.MonkeyPatch,
    attack: str,
) -> None:
    # Given two Admins, both logged in
    first = team.actors[ADMIN]
    second = await _second_admin(db, org)
    tokens = [await team.token(first), await team.token(second)]

    def demote(whom: Actor) -> tuple[str, dict[str, Any]]:
        return UPDATE_ROLE, {
            "input": {"memberId": gid("Member", whom.membership.id), "role": "AGENT"}
        }

    def remove(whom: Actor) -> tuple[str, dict[str, Any]]:
        return REMOVE, {"id": gid("Member", whom.membership.id)}

    plans = {
        "demote each other": [demote(second), demote(first)],
        "demote themselves": [demote(first), demote(second)],
        "remove each other": [remove(second), remove(first)],
        "demote and remove": [demote(second), remove(first)],
    }[attack]
    if dialect == "postgresql":
        # Both read their target before either checks: the race a naive check loses.
        # (SQLite serialises the two units of work from their start: BEGIN IMMEDIATE.)
        _meet_after_reading_the_target(monkeypatch)
    # When both act at the same time
    responses = await asyncio.gather(
        *(
            gql(team.client, token, query, variables)
            for token, (query, variables) in zip(tokens, plans, strict=True)
        )
    )
    # Then the workspace still has an Admin
    admins = await _admins(db, org)
    assert len(admins) == 1, [r.text for r in responses]
    # And one wins while the other is told why: CONFLICT, or, when the winner removed
    # the loser before the loser's request was authenticated, UNAUTHENTICATED (HTTP 401),
    # or, when the winner demoted the loser by then, FORBIDDEN (an Agent may not do it)
    outcomes = sorted(tuple(error_codes(r)) for r in responses)
    losers = [(CONFLICT,)]
    if attack in ("remove each other", "demote and remove"):
        losers.append(("UNAUTHENTICATED",))
    if attack in ("demote each other", "demote and remove"):
        losers.append(("FORBIDDEN",))
    assert outcomes[0] == (), [r.text for r in responses]
    assert outcomes[1] in losers, [r.text for r in responses]


# --- removal ends every session --------------------------------------------------------


async def test_removing_a_member_ends_all_their_sessions_at_once(team: Team) -> None:
    # Given a member logged in twice (say, laptop and phone)
    victim = team.target
    laptop = await tokens_for(team.client, victim)
    phone = await tokens_for(team.client, victim)
    assert await team.works(laptop["accessToken"])
    assert await team.works(phone["accessToken"])
    # When an Admin removes them
    removed = gid("Member", victim.membership.id)
    response = await team.call(team.actors[ADMIN], REMOVE, {"id": removed})
    assert without_cost(response.json()) == {"data": {"removeMember": removed}}
    # Then every token of theirs gets 401 on the next request, and refreshing fails
    for pair in (laptop, phone):
        stale = await gql(team.client, pair["accessToken"], "{ viewer { id } }")
        assert stale.status_code == 401
        assert error_codes(stale) == ["UNAUTHENTICATED"]
        refreshed = await team.client.post(
            "/auth/refresh", json={"refreshToken": pair["refreshToken"]}
        )
        assert refreshed.status_code == 401
    # And the removal is in the audit trail
    audit = (await team.call(team.actors[ADMIN], AUDIT)).json()["data"]["auditEvents"]
    assert "member.removed" in {e["node"]["action"] for e in audit["edges"]}


# --- the matrix, as documented ---------------------------------------------------------


def test_the_readme_carries_the_rendered_matrix_verbatim() -> None:
    """The documented role table is the permission module's, rendered (never hand-edited)."""
    page = (REPO_ROOT / "docs" / "security" / "README.md").read_text(encoding="utf-8")
    assert render_matrix() in page, (
        "docs/security/README.md must carry weflux.auth.permissions.render_matrix()"
    )
