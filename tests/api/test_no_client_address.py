"""Requests without a client address are limited too: per IP, they share one counter.

An ASGI server on a Unix socket gives no socket peer (`scope["client"]` is None), so
weflux.client_ip finds no address. The per-IP limits used to skip such requests; they
now count them together (weflux.throttle.ratelimit.per_ip), unless `WEFLUX_TRUSTED_PROXIES`
lists `unix`, when the proxy in front of the socket names each client in `X-Forwarded-For`.
The key is a string like any address: the store (memory or Redis) does not change this,
so these tests use the in-process one (a shared key in the test Redis would outlive them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fixtures.api import gql, login, token_for
from tests.fixtures.app import BASE_URL, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.settings import make_settings
from weflux.app import create_app

# The limits do not depend on the engine.
pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])

Clients = Callable[..., Any]


def without_peer(app: ASGIApp) -> ASGIApp:
    """`app` as a server on a Unix socket serves it: no client in the scope."""

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "client": None}, receive, send)

    return served


@pytest.fixture
def unix_app(database_urls: DatabaseUrls, tmp_path: Path) -> Clients:
    """`async with unix_app(**settings) as client(forwarded_for=None):` clients of one
    app served without a socket peer."""

    @asynccontextmanager
    async def build(**overrides: str) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
        settings = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            **overrides,
        )
        async with lifespan(create_app(settings)) as manager:
            transport = httpx.ASGITransport(app=without_peer(manager.app))
            opened: list[httpx.AsyncClient] = []

            def client(forwarded_for: str | None = None) -> httpx.AsyncClient:
                headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
                opened.append(
                    httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)
                )
                return opened[-1]

            yield client
            for each in opened:
                await each.aclose()

    return build


async def test_logins_without_an_address_share_one_limit(unix_app: Clients, admin: Actor) -> None:
    """Given login attempts limited to 2 an hour per client IP, and no client address,
    when three come from two different clients behind the socket,
    then the third is refused: they are counted together, not let through."""
    async with unix_app(rate_limit_login_ip="2/hour") as client:
        first, second = client(), client()
        assert (await login(first, admin.user.email, "wrong-password")).status_code == 401
        assert (await login(second, admin.user.email, "wrong-password")).status_code == 401
        refused = await login(first, admin.user.email)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "RATE_LIMITED"


async def test_graphql_without_an_address_is_limited(unix_app: Clients, admin: Actor) -> None:
    """Given GraphQL limited to 2 operations an hour per client IP, and no client address,
    when a third operation comes,
    then it is refused."""
    async with unix_app(rate_limit_graphql_ip="2/hour") as client:
        api = client()
        token = await token_for(api, admin)
        for _ in range(2):
            assert (await gql(api, token, "{ viewer { id } }")).status_code == 200
        assert (await gql(api, token, "{ viewer { id } }")).status_code == 429


async def test_webhook_handshakes_without_an_address_are_limited(unix_app: Clients) -> None:
    """Given failed handshakes limited to 2 an hour per client IP, and no client address,
    when a third wrong verify token comes,
    then it is refused before the token is compared."""
    params = {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "c"}
    async with unix_app(
        rate_limit_webhook_verify_ip="2/hour", meta_verify_token="the-platform-token"
    ) as client:
        guesser = client()
        for _ in range(2):
            assert (await guesser.get("/webhooks/whatsapp", params=params)).status_code == 403
        assert (await guesser.get("/webhooks/whatsapp", params=params)).status_code == 429


async def test_a_trusted_unix_socket_limits_each_forwarded_client(
    unix_app: Clients, admin: Actor
) -> None:
    """Given WEFLUX_TRUSTED_PROXIES=unix and logins limited to 2 an hour per client IP,
    when one forwarded client spends its limit,
    then it is refused and another forwarded client still logs in."""
    async with unix_app(rate_limit_login_ip="2/hour", trusted_proxies="unix") as client:
        attacker, bystander = client("198.51.100.31"), client("192.0.2.45")
        for _ in range(2):
            assert (await login(attacker, admin.user.email, "wrong-password")).status_code == 401
        assert (await login(attacker, admin.user.email)).status_code == 429
        assert (await login(bystander, admin.user.email)).status_code == 200
