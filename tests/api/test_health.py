"""Liveness and readiness, with the database and Redis going away and coming back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.app import create_app


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


@pytest.fixture
async def proxied_client(
    database_urls: DatabaseUrls, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, TcpProxy]]:
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(tmp_path, database_url=proxied, database_connect_timeout=1.0)
    app = create_app(settings)
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c, proxy
    await proxy.close()


@postgres_only
async def test_readyz_is_503_while_postgres_is_unreachable_and_200_after(
    proxied_client: tuple[httpx.AsyncClient, TcpProxy],
) -> None:
    client, proxy = proxied_client
    assert (await client.get("/readyz")).status_code == 200

    await proxy.cut()
    down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["database"] == "unavailable"
    assert (await client.get("/healthz")).status_code == 200

    await proxy.restore()
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_readyz_is_503_when_redis_is_unreachable_and_200_after(
    database_urls: DatabaseUrls, tmp_path: Path, require_redis: None
) -> None:
    redis_url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(redis_url.host or "127.0.0.1", redis_url.port or 6379)
    await proxy.start()
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        redis_url=f"redis://127.0.0.1:{proxy.port}/{redis_url.database or 0}",
    )
    app = create_app(settings)
    try:
        async with lifespan(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                ready = await client.get("/readyz")
                assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
                await proxy.cut()
                down = await client.get("/readyz")
                assert down.status_code == 503
                assert down.json()["checks"] == {"database": "ok", "redis": "unavailable"}
                await proxy.restore()
                assert (await client.get("/readyz")).status_code == 200
    finally:
        await proxy.close()


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "req-1234567890"})
    assert given.headers["X-Request-ID"] == "req-1234567890"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\n"})
    assert made.headers["X-Request-ID"] != "bad id\n"
    assert len(made.headers["X-Request-ID"]) == 32
