"""PostgreSQL that stops answering without a reset (a network partition, a host gone): a
serving process gives up on its connections after the statement timeout and a margin
(`weflux.db.ANSWER_MARGIN`), answers, and works again once the server is back.

Without that bound a request (or a worker's job, a socket's read) that drew a pooled
connection waited for an answer until TCP gave up, many minutes later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.api import login, token_for
from tests.fixtures.app import BASE_URL, lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.live import SECRET
from tests.fixtures.settings import make_settings
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.app import create_app
from weflux.db import ANSWER_MARGIN, Database
from weflux.db_errors import RETRY_AFTER
from weflux.models import Message, Organization, WhatsAppAccount

pytestmark = postgres_only

STATEMENT_TIMEOUT = timedelta(seconds=1)
# The bound and its cancel request (bounded alike), with room for a loaded machine; far
# below the minutes TCP takes to give up on a silent peer.
ANSWERED_WITHIN = 3 * (STATEMENT_TIMEOUT + ANSWER_MARGIN).total_seconds()
VIEWER = "{ viewer { id } }"


@dataclass
class Partitioned:
    client: httpx.AsyncClient
    proxy: TcpProxy


@pytest.fixture
async def partitioned(database_urls: DatabaseUrls, tmp_path: Path) -> AsyncIterator[Partitioned]:
    """A serving app whose PostgreSQL is behind a proxy the test can silence."""
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    settings = make_settings(
        tmp_path,
        database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        ),
        database_connect_timeout=1.0,
        database_statement_timeout=STATEMENT_TIMEOUT,
        meta_app_secret=SECRET,
    )
    app = create_app(settings)
    try:
        async with lifespan(app) as manager:
            # As uvicorn: an app's exception is answered (500) and logged, not raised here.
            transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
                yield Partitioned(client, proxy)
    finally:
        await proxy.close()


def assert_unavailable(answer: httpx.Response, *, graphql: bool = False) -> None:
    """503 UPSTREAM_UNAVAILABLE with Retry-After, in the route's shape, and nothing more."""
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == str(RETRY_AFTER)
    message = "A service this request needs is unavailable; try again later"
    if graphql:
        extensions = {"code": "UPSTREAM_UNAVAILABLE", "retryAfter": RETRY_AFTER}
        assert answer.json() == {"errors": [{"message": message, "extensions": extensions}]}
    else:
        assert answer.json() == {"error": {"code": "UPSTREAM_UNAVAILABLE", "message": message}}


async def _viewer(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/graphql", json={"query": VIEWER}, headers={"Authorization": f"Bearer {token}"}
    )


async def test_a_request_on_a_connection_the_server_stopped_answering_is_answered(
    partitioned: Partitioned, admin: Actor
) -> None:
    """Given a process whose pooled connection's server goes silent (no reset),
    when a GraphQL request draws that connection,
    then it is answered within the statement timeout and a margin, 503
    UPSTREAM_UNAVAILABLE with Retry-After (nothing of the driver's error), and once the
    server answers again the next request is served on a new connection."""
    client, proxy = partitioned.client, partitioned.proxy
    token = await token_for(client, admin)  # the pool's connection, in brisk use
    await proxy.partition()

    async with asyncio.timeout(ANSWERED_WITHIN):
        answer = await _viewer(client, token)
    assert_unavailable(answer, graphql=True)

    await proxy.restore()
    again = await _viewer(client, token)
    assert again.status_code == 200, again.text
    assert again.json()["data"]["viewer"]["id"]


async def test_a_webhook_whose_database_went_silent_is_503_and_meta_s_retry_stores_it_once(
    partitioned: Partitioned, db: Database, org: Organization, channel: WhatsAppAccount
) -> None:
    """Given a process whose pooled connection's server goes silent (no reset),
    when Meta posts a message, then the answer is 503 within the bound (never a 200: the
    event could not be stored), and Meta's retry once the server is back stores the
    message, once."""
    client, proxy = partitioned.client, partitioned.proxy
    raw = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                messages=[wh.text_message(body="during the partition", from_wa_id="15550001111")],
                contacts=[wh.contact(wa_id="15550001111", name="Partitioned")],
            )
        )
    )
    headers = {"X-Hub-Signature-256": wh.sign(raw, SECRET), "Content-Type": "application/json"}
    await _warm(client)
    await proxy.partition()

    async with asyncio.timeout(ANSWERED_WITHIN):
        answer = await client.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert answer.status_code == 503

    await proxy.restore()
    retried = await client.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert retried.status_code == 200
    async with db.session(org.id) as session:
        texts = await session.exec(
            select(Message.text).where(col(Message.text) == "during the partition")
        )
        assert list(texts) == ["during the partition"]


async def test_a_database_refusing_connections_is_503_on_every_route(
    partitioned: Partitioned, admin: Actor
) -> None:
    """Given a process whose PostgreSQL resets its connections and refuses new ones,
    when a member logs in, asks GraphQL, or logs out, then each answer is 503
    UPSTREAM_UNAVAILABLE with Retry-After, in the route's own error shape, naming no host,
    driver or statement (CONTRACT §4 keeps INTERNAL_SERVER_ERROR for our own faults);
    once it accepts again, the same requests are served."""
    client, proxy = partitioned.client, partitioned.proxy
    token = await token_for(client, admin)
    await proxy.cut()

    assert_unavailable(await login(client, admin.user.email))
    assert_unavailable(await _viewer(client, token), graphql=True)
    logout = await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert_unavailable(logout)

    await proxy.restore()
    assert (await _viewer(client, token)).status_code == 200
    assert (await login(client, admin.user.email)).status_code == 200


async def test_a_browser_reads_the_503_and_its_retry_after(
    partitioned: Partitioned, admin: Actor
) -> None:
    """Given a frontend on an allowed origin and a database refusing connections,
    when it logs in or asks GraphQL, then the 503 carries CORS (the origin allowed,
    `Retry-After` and the request id exposed) beside the security headers: without
    them a browser reads the answer as a network error, never its code or wait (the
    error middleware answered outside CORS)."""
    client, proxy = partitioned.client, partitioned.proxy
    origin = {"Origin": "http://localhost:5173"}
    token = await token_for(client, admin)
    await proxy.cut()

    answers = [
        await client.post(
            "/auth/login",
            json={"email": admin.user.email, "password": PASSWORD},
            headers=origin,
        ),
        await client.post(
            "/graphql",
            json={"query": VIEWER},
            headers={**origin, "Authorization": f"Bearer {token}"},
        ),
    ]
    for answer, graphql in zip(answers, (False, True), strict=True):
        assert_unavailable(answer, graphql=graphql)
        assert answer.headers["access-control-allow-origin"] == origin["Origin"]
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert {"retry-after", "x-request-id"} <= {name.strip() for name in exposed.split(",")}
        assert answer.headers["x-request-id"]
        assert answer.headers["x-content-type-options"] == "nosniff"


async def _warm(client: httpx.AsyncClient) -> None:
    """One pooled connection, just used (no idle ping before its next use)."""
    assert (await client.get("/readyz")).status_code == 200
