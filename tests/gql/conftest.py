"""Helpers of the GraphQL attack tests: apps built with custom settings, DB look-ups."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import make_settings
from tests.fixtures.databases import DatabaseUrls

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client(database_urls: DatabaseUrls, tmp_path: Path) -> ClientFactory:
    """`async with make_client(graphql_ide=True, base_url=...) as client:` on the test's DB."""

    @asynccontextmanager
    async def factory(
        base_url: str = "http://testserver", **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        from weflux.app import create_app

        settings = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            **overrides,
        )
        application = create_app(settings)
        async with LifespanManager(application) as manager:
            transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield client

    return factory
