"""Calculated query cost over HTTP: refused above the node limit, charged, reported.

`tests/gql/test_cost_analysis.py` checks the count itself; the WebSocket side is in
`tests/gql/test_socket_operations.py`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import ClientFactory, counting
from tests.fixtures.factories import Actor, create_conversation, create_whatsapp_account
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.throttle import freeze_cost_budgets
from weflux.db import Database
from weflux.models import Organization

ATTACK = (
    "{ conversations(first:50){edges{node{messages(last:50){edges{node{conversation"
    "{messages(last:50){edges{cursor}}}}}}}}}}"
)
PAGE = "query($n: Int!) { conversations(first: $n) { edges { node { id contact { name } } } } }"
NESTED = """query($n: Int!, $m: Int!) { conversations(first: $n) { edges { node {
  messages(last: $m) { edges { cursor } } } } } }"""
COST_KEYS = {"requested", "nodes", "remaining", "maximum", "restoreRate"}


def cost_of(response: httpx.Response) -> dict[str, Any]:
    cost: dict[str, Any] = response.json()["extensions"]["cost"]
    assert set(cost) == COST_KEYS
    return cost


@pytest.fixture
async def conversations(db: Database, org: Organization) -> None:
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
        for _ in range(3):
            await create_conversation(session, account=account)


async def test_the_issues_query_is_refused_before_it_touches_the_database(
    app: Starlette, client: httpx.AsyncClient, agent: Actor, conversations: None
) -> None:
    # Given an Agent, authenticated (the cache then answers without the database)
    token = await token_for(client, agent)
    assert "errors" not in (await gql(client, token, "{ viewer { id } }")).json()
    # When they send the issue's 200-byte query
    with counting(app) as statements:
        response = await gql(client, token, ATTACK)
    # Then it is refused, saying what it would cost and what the limit is
    body = response.json()
    assert response.status_code == 200
    assert body["data"] is None
    assert error_codes(response) == ["QUERY_TOO_COMPLEX"]
    message = body["errors"][0]["message"]
    assert "127,550" in message
    assert "10,000" in message
    assert cost_of(response)["nodes"] == 127_550
    # And not one SQL statement was sent
    assert statements == []


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_node_limit_follows_its_setting(
    make_client: ClientFactory, admin: Actor, conversations: None
) -> None:
    async with make_client(graphql_max_nodes=500) as client:
        token = await token_for(client, admin)
        # 20 + 20 x 24 = 500 nodes: at the limit, it runs
        at_limit = await gql(client, token, NESTED, {"n": 20, "m": 24})
        assert "errors" not in at_limit.json(), at_limit.text
        assert cost_of(at_limit)["nodes"] == 500
        # 20 + 20 x 25 = 520: above it, refused; variables are counted too
        above = await gql(client, token, NESTED, {"n": 20, "m": 25})
        assert error_codes(above) == ["QUERY_TOO_COMPLEX"]
        assert "520" in above.json()["errors"][0]["message"]


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_every_graphql_response_reports_its_cost(
    client: httpx.AsyncClient, make_client: ClientFactory, admin: Actor, conversations: None
) -> None:
    # The default budgets: the member's bucket is the tighter one
    default = cost_of(await gql(client, await token_for(client, admin), PAGE, {"n": 30}))
    assert (default["requested"], default["nodes"]) == (31, 30)
    assert (default["maximum"], default["restoreRate"]) == (20_000, 200)
    # Budgets that restore too slowly to move during the test: exact figures
    async with make_client(rate_limit_graphql_cost_member="20000:1/hour") as slow:
        token = await token_for(slow, admin)
        # A query: its nodes + 1, taken from the budget
        first = cost_of(await gql(slow, token, PAGE, {"n": 30}))
        assert first["requested"] == 31
        assert first["remaining"] == 20_000 - 31
        # A mutation: a fixed 10 more (a failed one is charged all the same)
        change = 'mutation { changePassword(input: {currentPassword: "x", newPassword: "y"}) }'
        assert cost_of(await gql(slow, token, change))["requested"] == 10
        # Refused ones report too, and are not charged: invalid, too complex
        invalid = cost_of(await gql(slow, token, "{ viewr { id } }"))
        assert invalid["requested"] == 0
        too_complex = cost_of(await gql(slow, token, ATTACK))
        assert too_complex["requested"] == 127_551
        assert too_complex["remaining"] == invalid["remaining"] == 20_000 - 31 - 10


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_member_who_spends_their_budget_gets_429_and_others_go_on(
    make_client: ClientFactory,
    admin: Actor,
    manager: Actor,
    other_admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freeze_cost_budgets(monkeypatch)  # the exact wait below: nothing refills meanwhile
    budgets = {
        "graphql_max_nodes": 100,
        "rate_limit_graphql_cost_member": "150:1/minute",
        "rate_limit_graphql_cost_workspace": "10000:1/minute",
    }
    async with make_client(**budgets) as client:
        token = await token_for(client, admin)
        # Given an Admin who spent 101 of their 150 points
        assert "errors" not in (await gql(client, token, PAGE, {"n": 100})).json()
        # When they ask for 101 more
        refused = await gql(client, token, PAGE, {"n": 100})
        # Then it is refused like the request limits: 429, Retry-After, RATE_LIMITED
        assert refused.status_code == 429
        assert error_codes(refused) == ["RATE_LIMITED"]
        wait = int(refused.headers["Retry-After"])
        assert wait == (101 - 49) * 60  # 52 points missing at one a minute
        assert refused.json()["errors"][0]["extensions"]["retryAfter"] == wait
        assert cost_of(refused)["remaining"] == 49
        # A cheaper operation still fits
        assert "errors" not in (await gql(client, token, "{ viewer { id } }")).json()
        # Another member of the workspace, and another workspace, are untouched
        for actor in (manager, other_admin):
            other = await gql(client, await token_for(client, actor), PAGE, {"n": 100})
            assert other.status_code == 200, other.text
            assert "errors" not in other.json()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_workspace_budget_is_shared_by_its_members(
    make_client: ClientFactory, admin: Actor, manager: Actor, other_admin: Actor
) -> None:
    budgets = {
        "graphql_max_nodes": 100,
        "rate_limit_graphql_cost_member": "10000:1/minute",
        "rate_limit_graphql_cost_workspace": "150:1/minute",
    }
    async with make_client(**budgets) as client:
        # Given the Admin spent 101 of the workspace's 150 points
        admin_token = await token_for(client, admin)
        assert "errors" not in (await gql(client, admin_token, PAGE, {"n": 100})).json()
        # Then the Manager of the same workspace cannot spend 101 more
        refused = await gql(client, await token_for(client, manager), PAGE, {"n": 100})
        assert refused.status_code == 429
        assert cost_of(refused)["maximum"] == 150  # the workspace's, the tighter one
        # And another workspace is untouched
        theirs = await gql(client, await token_for(client, other_admin), PAGE, {"n": 100})
        assert theirs.status_code == 200


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_processes_sharing_redis_share_the_budget(
    make_client: ClientFactory, admin: Actor, require_redis: None
) -> None:

    budgets = {
        "redis_url": TEST_REDIS_URL,
        "graphql_max_nodes": 100,
        "rate_limit_graphql_cost_member": "150:1/minute",
    }
    # Given two processes sharing Redis
    async with make_client(**budgets) as one, make_client(**budgets) as other:
        # When a member spends their budget through one
        assert (
            "errors" not in (await gql(one, await token_for(one, admin), PAGE, {"n": 100})).json()
        )
        # Then the other refuses them too
        refused = await gql(other, await token_for(other, admin), PAGE, {"n": 100})
        assert refused.status_code == 429
        assert error_codes(refused) == ["RATE_LIMITED"]
