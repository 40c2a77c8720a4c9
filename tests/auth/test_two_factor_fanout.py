"""The two-factor policy reaches every process at once, through the broker (Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from tests.fixtures.two_factor import REQUIRE, enroll
from weflux.app import create_app
from weflux.realtime.broker import RedisBroker
from weflux.runtime import runtime_of

VIEWER = "{ viewer { role } }"


@contextlib.asynccontextmanager
async def _process(settings_path: Path, urls: DatabaseUrls) -> AsyncIterator[httpx.AsyncClient]:
    """One app instance with its own session cache and broker connection."""
    settings = make_settings(
        settings_path,
        database_url=urls.app,
        database_migration_url=urls.owner,
        redis_url=TEST_REDIS_URL,
    )
    app = create_app(settings)
    async with lifespan(app) as manager:
        broker = runtime_of(app).broker
        assert isinstance(broker, RedisBroker)
        await broker.wait_connected()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@postgres_only
async def test_requiring_two_factors_on_one_process_holds_members_on_another(
    database_urls: DatabaseUrls, tmp_path: Path, require_redis: None, admin: Actor, agent: Actor
) -> None:
    """Given an Agent whose session process B has cached, when an Admin requires two
    factors on process A, then B answers TWO_FACTOR_REQUIRED (long before its cache would
    expire); once the Agent enrolls on B, A lets them through."""
    async with (
        _process(tmp_path / "a", database_urls) as a,
        _process(tmp_path / "b", database_urls) as b,
    ):
        agent_token = await token_for(b, agent)
        assert error_codes(await gql(b, agent_token, VIEWER)) == []  # cached on B
        assert error_codes(await gql(a, agent_token, VIEWER)) == []  # cached on A
        admin_token = await token_for(a, admin)
        await enroll(a, admin_token)

        assert error_codes(await gql(a, admin_token, REQUIRE, {"on": True})) == []

        async with asyncio.timeout(10):
            while error_codes(await gql(b, agent_token, VIEWER)) != ["TWO_FACTOR_REQUIRED"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # (another process's state)
        await enroll(b, agent_token)
        async with asyncio.timeout(10):
            while error_codes(await gql(a, agent_token, VIEWER)) != []:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
