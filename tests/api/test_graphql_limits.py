"""GraphQL rate limits: per workspace and per IP, 429 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.settings import make_settings
from weflux.app import create_app

VIEWER = "{ viewer { id } }"


@pytest.fixture
async def limited(database_urls: DatabaseUrls, tmp_path: Path) -> AsyncIterator[Any]:
    async def build(**limits: str) -> httpx.AsyncClient:
        settings = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            **limits,
        )
        app = create_app(settings)
        manager = lifespan(app)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app, client=("198.51.100.9", 4000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    managers: list[LifespanManager] = []
    yield build
    for manager in managers:
        await manager.__aexit__(None, None, None)


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_one_workspace_exhausting_its_quota_does_not_slow_another(
    limited: Any, admin: Actor, other_admin: Actor
) -> None:
    client = await limited(rate_limit_graphql_workspace="3/hour")
    ours, theirs = await token_for(client, admin), await token_for(client, other_admin)
    for _ in range(3):
        assert (await gql(client, ours, VIEWER)).status_code == 200
    refused = await gql(client, ours, VIEWER)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert (await gql(client, theirs, VIEWER)).status_code == 200


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_graphql_is_limited_per_ip(limited: Any, admin: Actor) -> None:
    client = await limited(rate_limit_graphql_ip="2/hour")
    token = await token_for(client, admin)
    assert (await gql(client, token, VIEWER)).status_code == 200
    assert (await gql(client, token, VIEWER)).status_code == 200
    assert (await gql(client, token, VIEWER)).status_code == 429


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_unauthenticated_calls_are_refused_before_counting(
    limited: Any, admin: Actor
) -> None:
    client = await limited(rate_limit_graphql_ip="2/hour")
    for _ in range(5):
        assert (await gql(client, None, VIEWER)).status_code == 401
    token = await token_for(client, admin)
    assert (await gql(client, token, VIEWER)).status_code == 200
