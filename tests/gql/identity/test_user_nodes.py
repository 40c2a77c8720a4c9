"""`User` is a Node: `node(id:)` finds the users of the caller's workspace, and no others."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.factories import Actor, create_membership
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Organization, Role

NODE = """query($id: ID!) { node(id: $id) { id __typename ... on User { email name } } }"""
MEMBERS = "{ members { id user { id email } } }"
REMOVE = "mutation($id: ID!) { removeMember(memberId: $id) }"


async def _node(client: httpx.AsyncClient, actor: Actor, global_id: str) -> httpx.Response:
    response = await gql(client, await token_for(client, actor), NODE, {"id": global_id})
    assert response.status_code == 200, response.text
    return response


def _user_id(actor: Actor) -> str:
    return encode_global_id("User", actor.user.id)


async def test_every_role_resolves_the_users_of_its_workspace(
    client: httpx.AsyncClient, admin: Actor, manager: Actor, agent: Actor
) -> None:
    """Given the members of a workspace, when each role asks `node` for a user id that
    `members` answers, then the user comes back under that id."""
    listed = await gql(client, await token_for(client, agent), MEMBERS)
    user_ids = {m["user"]["email"]: m["user"]["id"] for m in listed.json()["data"]["members"]}
    assert user_ids[admin.user.email] == _user_id(admin)
    for caller in (admin, manager, agent):
        for member in (admin, manager, agent):
            node = (await _node(client, caller, _user_id(member))).json()["data"]["node"]
            assert node == {
                "id": _user_id(member),
                "__typename": "User",
                "email": member.user.email,
                "name": member.user.name,
            }


async def test_users_of_other_workspaces_are_not_found_as_missing_ones(
    client: httpx.AsyncClient,
    db: Database,
    other_org: Organization,
    admin: Actor,
    agent: Actor,
    other_admin: Actor,
) -> None:
    """Given a user of both workspaces and one of the other workspace only, when an Acme
    member asks for each, then the shared user resolves and the other is NOT_FOUND,
    exactly as a user id that does not exist."""
    async with db.session(other_org.id) as session:
        await create_membership(session, user=agent.user, role=Role.MANAGER)

    for caller in (admin, agent):
        shared = (await _node(client, caller, _user_id(agent))).json()["data"]["node"]
        assert shared["email"] == agent.user.email
    foreign = await _node(client, admin, _user_id(other_admin))
    missing = await _node(client, admin, encode_global_id("User", uuid.uuid4()))
    assert error_codes(foreign) == ["NOT_FOUND"]
    assert foreign.json() == missing.json()
    assert other_admin.user.email not in foreign.text

    # and from the other side: Globex's admin finds the shared user, not Acme's admin
    theirs = (await _node(client, other_admin, _user_id(agent))).json()["data"]["node"]
    assert theirs["email"] == agent.user.email
    assert error_codes(await _node(client, other_admin, _user_id(admin))) == ["NOT_FOUND"]


async def test_a_removed_members_user_is_not_found(
    client: httpx.AsyncClient, admin: Actor, manager: Actor
) -> None:
    """Given a member the Admin removes, when their user id is asked for, then NOT_FOUND."""
    token = await token_for(client, admin)
    removed: dict[str, Any] = (
        await gql(client, token, REMOVE, {"id": encode_global_id("Member", manager.membership.id)})
    ).json()
    assert "errors" not in removed, removed
    assert error_codes(await _node(client, admin, _user_id(manager))) == ["NOT_FOUND"]
