"""Webhook secrets cannot be guessed: failed proofs are limited per client IP and per URL.

A wrong verify token (the handshake) or a bad signature (a notification) counts. When a
client IP or a webhook URL has spent its failures, a handshake is answered 429 with
Retry-After before its token is compared, and a badly signed notification 429 instead of
401. A correctly signed notification is never throttled (an HMAC cannot be guessed, and
Meta's retries must get through whatever an attacker spent), and successes never count.
On the in-process store and on Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures import webhooks as wh
from tests.fixtures.app import client_of, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import create_whatsapp_account
from tests.fixtures.secops import fresh_ip
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Organization, WebhookEvent, WhatsAppAccount
from weflux.runtime import runtime_of

PLATFORM_SECRET = "platform-app-secret-0123456789"
PLATFORM_VERIFY = "platform-verify-token-0123"
CHANNEL_SECRET = "channel-app-secret-abcdef0123"
CHANNEL_VERIFY = "channel-verify-token-abcd"
GENEROUS = "10000/minute"

pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])

Clients = Callable[..., AsyncIterator[Any]]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """The limiter's store: this process's memory, or Redis."""
    if request.param == "redis":
        request.getfixturevalue("require_redis")
    return str(request.param)


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> dict[str, str]:
    """The limits a test exercises (`indirect` parameters); the others are generous."""
    generous = {
        f"rate_limit_webhook_{proof}_{per}": GENEROUS
        for proof in ("verify", "signature")
        for per in ("ip", "key")
    }
    return generous | getattr(request, "param", {})


def limited(**values: str) -> pytest.MarkDecorator:
    """The limits a test spends: per hour, not per minute (the sliding window forgives a
    share of the previous window's hits once a new one starts, which a slow run could
    straddle)."""
    return pytest.mark.parametrize("limits", [values], indirect=True)


@pytest.fixture
async def app(
    database_urls: DatabaseUrls, tmp_path: Path, store: str, limits: dict[str, str]
) -> AsyncIterator[Starlette]:
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=PLATFORM_SECRET,
        meta_verify_token=PLATFORM_VERIFY,
        redis_url=TEST_REDIS_URL if store == "redis" else None,
        **limits,
    )
    application = create_app(settings)
    async with lifespan(application):
        yield application


@pytest.fixture
async def channel(db: Database, app: Starlette, org: Organization) -> WhatsAppAccount:
    keyring: KeyRing = runtime_of(app).keyring
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session, org_id=org.id)
        seal(keyring, account, "app_secret_enc", CHANNEL_SECRET)
        seal(keyring, account, "webhook_verify_token_enc", CHANNEL_VERIFY)
    return account


def path_of(channel: WhatsAppAccount) -> str:
    return f"/webhooks/whatsapp/{channel.webhook_key}"


async def handshake(client: httpx.AsyncClient, path: str, token: str) -> httpx.Response:
    params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "42"}
    return await client.get(path, params=params)


async def notify(
    client: httpx.AsyncClient, path: str, secret: str, *, valid: bool = True
) -> httpx.Response:
    body = wh.encode(
        wh.webhook_body(wh.messages_change(messages=[wh.text_message()], contacts=[wh.contact()]))
    )
    signature = wh.sign(body, secret) if valid else "sha256=" + "0" * 64
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    return await client.post(path, content=body, headers=headers)


async def stored_events(owner: Database) -> int:
    async with owner.session(all_workspaces="test: count webhook events") as session:
        return int((await session.exec(select(func.count()).select_from(WebhookEvent))).one())


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 3600  # within the hour
    assert response.headers["Cache-Control"] == "no-store"


@limited(rate_limit_webhook_verify_ip="3/hour")
async def test_verify_token_guesses_are_throttled_per_client_ip(
    app: Starlette, channel: WhatsAppAccount
) -> None:
    """Given one client IP that guessed three wrong verify tokens,
    when it tries again, even with the right token, then it gets 429 with Retry-After;
    another IP still completes the handshake."""
    guesser, meta = fresh_ip(), fresh_ip()
    async with client_of(app, guesser) as attacker, client_of(app, meta) as other:
        for guess in range(3):
            wrong = await handshake(attacker, path_of(channel), f"guess-{guess}")
            assert wrong.status_code == 403
        assert_throttled(await handshake(attacker, path_of(channel), CHANNEL_VERIFY))
        assert_throttled(await handshake(attacker, "/webhooks/whatsapp", PLATFORM_VERIFY))
        ok = await handshake(other, path_of(channel), CHANNEL_VERIFY)
        assert ok.status_code == 200
        assert ok.text == "42"


@limited(rate_limit_webhook_verify_key="3/hour")
async def test_verify_token_guesses_are_throttled_per_webhook_url(
    app: Starlette, channel: WhatsAppAccount
) -> None:
    """Given three wrong verify tokens against one channel's URL, each from another IP,
    when a fourth IP tries that URL, then it gets 429 before its token is compared;
    the platform's URL still answers that IP."""
    for guess in range(3):
        async with client_of(app, fresh_ip()) as attacker:
            wrong = await handshake(attacker, path_of(channel), f"guess-{guess}")
            assert wrong.status_code == 403
    async with client_of(app, fresh_ip()) as late:
        assert_throttled(await handshake(late, path_of(channel), CHANNEL_VERIFY))
        assert (await handshake(late, "/webhooks/whatsapp", PLATFORM_VERIFY)).status_code == 200


@limited(rate_limit_webhook_signature_ip="3/hour")
async def test_bad_signatures_are_throttled_per_client_ip(
    app: Starlette, owner_db: Database, channel: WhatsAppAccount
) -> None:
    """Given one client IP that sent three badly signed notifications,
    when it sends a fourth, then it gets 429 and nothing is stored; a correctly signed
    notification, from that IP or another, is still taken."""
    async with client_of(app, fresh_ip()) as attacker, client_of(app, fresh_ip()) as meta:
        for _ in range(3):
            bad = await notify(attacker, path_of(channel), CHANNEL_SECRET, valid=False)
            assert bad.status_code == 401
        assert_throttled(await notify(attacker, path_of(channel), CHANNEL_SECRET, valid=False))
        assert await stored_events(owner_db) == 0
        assert (await notify(attacker, path_of(channel), CHANNEL_SECRET)).status_code == 200
        assert (await notify(meta, path_of(channel), CHANNEL_SECRET)).status_code == 200
    assert await stored_events(owner_db) == 2


@limited(rate_limit_webhook_signature_key="3/hour")
async def test_bad_signatures_are_throttled_per_webhook_url(
    app: Starlette, owner_db: Database, channel: WhatsAppAccount
) -> None:
    """Given three badly signed notifications to one channel's URL from three IPs,
    when a fourth IP posts a badly signed one there, then it gets 429; Meta's correctly
    signed deliveries to that URL, and anything on the platform's URL, are unaffected."""
    for _ in range(3):
        async with client_of(app, fresh_ip()) as attacker:
            bad = await notify(attacker, path_of(channel), CHANNEL_SECRET, valid=False)
            assert bad.status_code == 401
    async with client_of(app, fresh_ip()) as late, client_of(app, fresh_ip()) as meta:
        assert_throttled(await notify(late, path_of(channel), CHANNEL_SECRET, valid=False))
        assert (await notify(meta, path_of(channel), CHANNEL_SECRET)).status_code == 200
        assert (await notify(late, "/webhooks/whatsapp", PLATFORM_SECRET)).status_code == 200
    assert await stored_events(owner_db) == 2


@limited(
    rate_limit_webhook_verify_ip="2/hour",
    rate_limit_webhook_verify_key="2/hour",
    rate_limit_webhook_signature_ip="2/hour",
    rate_limit_webhook_signature_key="2/hour",
)
async def test_a_storm_of_valid_signed_deliveries_is_never_throttled(
    app: Starlette, owner_db: Database, channel: WhatsAppAccount
) -> None:
    """Given limits of two failures an hour, spent on the channel's URL by an attacker,
    when Meta retries a backlog (60 correctly signed notifications from one IP to one URL)
    and re-subscribes 10 times with the right token, then every answer is 200."""
    async with client_of(app, fresh_ip()) as attacker:
        for _ in range(3):
            await notify(attacker, path_of(channel), CHANNEL_SECRET, valid=False)
    async with client_of(app, fresh_ip()) as meta:
        answers = [
            (await notify(meta, path_of(channel), CHANNEL_SECRET)).status_code for _ in range(60)
        ]
        answers += [
            (await handshake(meta, path_of(channel), CHANNEL_VERIFY)).status_code for _ in range(10)
        ]
    assert answers == [200] * 70
    assert await stored_events(owner_db) == 60


@limited(rate_limit_webhook_verify_ip="2/hour")
async def test_an_unknown_webhook_url_is_404_and_not_counted(app: Starlette) -> None:
    """A URL naming no channel proves nothing wrong about a secret: 404, uncounted."""
    async with client_of(app, fresh_ip()) as client:
        for _ in range(5):
            assert (
                await handshake(client, "/webhooks/whatsapp/no-such-key", "x")
            ).status_code == 404
        assert (await handshake(client, "/webhooks/whatsapp", PLATFORM_VERIFY)).status_code == 200
