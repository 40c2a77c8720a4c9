"""Message templates: synced from Meta (every page), read by everyone, refused when unsendable."""

from __future__ import annotations

import httpx

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.channels import Connector
from tests.fixtures.factories import Actor
from tests.fixtures.meta import BUSINESS_ACCOUNT_ID
from weflux.sandbox.cloud_api import FakeCloudApi

SYNC = """mutation($id: ID!) { syncMessageTemplates(whatsAppAccountId: $id) {
  id name languageCode category status bodyText parameterCount } }"""
LIST = """query($id: ID!, $status: String) { messageTemplates(whatsAppAccountId: $id,
  status: $status) { id name languageCode status parameterCount } }"""
NODE = "query($id: ID!) { node(id: $id) { ... on MessageTemplate { name status } } }"


async def _connected(connect: Connector, admin: Actor) -> str:
    return str((await connect(admin)).json()["data"]["connectWhatsAppAccount"]["id"])


async def test_a_sync_reads_every_page_and_counts_parameters(
    connect: Connector,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
) -> None:
    account = await _connected(connect, admin)
    fake_meta.max_page_size = 2
    for index in range(5):
        fake_meta.add_template(
            BUSINESS_ACCOUNT_ID,
            f"order_update_{index}",
            body="Hi {{1}}, order {{2}} ships {{ 3 }}; thanks {{1}}",
        )
    fake_meta.add_template(BUSINESS_ACCOUNT_ID, "promo", status="PENDING", body="No parameters")

    response = await gql(client, await token_for(client, manager), SYNC, {"id": account})
    synced = response.json()["data"]["syncMessageTemplates"]
    assert sorted(t["name"] for t in synced) == [*(f"order_update_{i}" for i in range(5)), "promo"]
    counts = {t["name"]: t["parameterCount"] for t in synced}
    assert counts["order_update_0"] == 3
    assert counts["promo"] == 0
    pages = [r for r in fake_meta.requests if r.path.endswith("/message_templates")]
    assert len(pages) == 3  # 6 templates, 2 a page, each cursor followed

    agent_token = await token_for(client, agent)
    approved = await gql(client, agent_token, LIST, {"id": account, "status": "APPROVED"})
    assert len(approved.json()["data"]["messageTemplates"]) == 5
    everything = await gql(client, agent_token, LIST, {"id": account})
    templates = everything.json()["data"]["messageTemplates"]
    assert len(templates) == 6
    node = await gql(client, agent_token, NODE, {"id": templates[0]["id"]})
    assert node.json()["data"]["node"]["name"] == templates[0]["name"]

    # A template deleted at Meta disappears at the next sync.
    fake_meta.templates[BUSINESS_ACCOUNT_ID].pop()
    again = await gql(client, await token_for(client, admin), SYNC, {"id": account})
    assert len(again.json()["data"]["syncMessageTemplates"]) == 5


async def test_agents_may_not_sync_and_other_workspaces_find_nothing(
    connect: Connector,
    admin: Actor,
    agent: Actor,
    other_admin: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
) -> None:
    account = await _connected(connect, admin)
    fake_meta.add_template(BUSINESS_ACCOUNT_ID, "hello")
    refused = await gql(client, await token_for(client, agent), SYNC, {"id": account})
    assert error_codes(refused) == ["FORBIDDEN"]
    await gql(client, await token_for(client, admin), SYNC, {"id": account})
    theirs = await token_for(client, other_admin)
    assert error_codes(await gql(client, theirs, SYNC, {"id": account})) == ["NOT_FOUND"]
    assert error_codes(await gql(client, theirs, LIST, {"id": account})) == ["NOT_FOUND"]
    mine = await gql(client, await token_for(client, admin), LIST, {"id": account})
    template_id = mine.json()["data"]["messageTemplates"][0]["id"]
    assert error_codes(await gql(client, theirs, NODE, {"id": template_id})) == ["NOT_FOUND"]


async def test_meta_failing_the_sync_is_upstream_unavailable(
    connect: Connector, admin: Actor, client: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    account = await _connected(connect, admin)
    fake_meta.fail_next_raw(http_status=503)
    response = await gql(client, await token_for(client, admin), SYNC, {"id": account})
    assert error_codes(response) == ["UPSTREAM_UNAVAILABLE"]
