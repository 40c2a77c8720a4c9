"""The per-process cache of webhook channels and routes: a change is seen by the next webhook.

A keyed webhook URL's channel, its decrypted secrets and its number's routes are cached
(weflux.services.channel_cache); any committed write of `whatsapp_accounts` through the
app's Database evicts them, in this process at once and in the others through the broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from tests.fixtures import webhooks as wh
from tests.fixtures.app import client_of, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.inbound import keyed_number
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Message, Organization, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of
from weflux.services.channel_cache import CHANNEL

KEY = "cache-key-000000000000000000000001"
OLD_SECRET = "channel-old-secret-0123456789"
NEW_SECRET = "channel-new-secret-9876543210"
PATH = f"/webhooks/whatsapp/{KEY}"


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
    )


@pytest.fixture
async def number(db: Database, settings: Settings, org: Organization) -> WhatsAppAccount:
    return await keyed_number(db, settings, org.id, webhook_key=KEY, app_secret=OLD_SECRET)


async def post(client: httpx.AsyncClient, secret: str) -> int:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(messages=[wh.text_message(body="hi")], contacts=[wh.contact()])
        )
    )
    headers = {"X-Hub-Signature-256": wh.sign(body, secret)}
    return (await client.post(PATH, content=body, headers=headers)).status_code


async def rotate(db: Database, settings: Settings, number: WhatsAppAccount) -> None:
    """What a credentials update does to the row, through `db` (one process's handle)."""
    async with db.session(number.org_id) as session:
        account = await session.get(WhatsAppAccount, number.id)
        assert account is not None
        seal(KeyRing.from_settings(settings), account, "app_secret_enc", NEW_SECRET)
        account.credentials_updated_at = utcnow()


async def disconnect(db: Database, number: WhatsAppAccount) -> None:
    async with db.session(number.org_id) as session:
        account = await session.get(WhatsAppAccount, number.id)
        assert account is not None
        account.disconnected_at = utcnow()


async def messages(db: Database, org_id: Any) -> int:
    async with db.session(org_id) as session:
        return int((await session.exec(select(func.count(col(Message.id))))).one())


async def test_a_rotated_secret_verifies_the_next_webhook(
    app: Any, client: httpx.AsyncClient, settings: Settings, number: WhatsAppAccount, db: Database
) -> None:
    """Given a keyed channel whose secrets this process has cached,
    when its app secret is rotated through the app's database handle,
    then the very next webhook signed with the old secret is refused, the new one taken."""
    assert await post(client, OLD_SECRET) == 200
    assert await post(client, OLD_SECRET) == 200  # served from the cache
    await rotate(runtime_of(app).db, settings, number)
    assert await post(client, OLD_SECRET) == 401
    assert await post(client, NEW_SECRET) == 200
    assert await messages(db, number.org_id) == 3


async def test_a_disconnected_channel_is_gone_for_the_next_webhook(
    app: Any, client: httpx.AsyncClient, number: WhatsAppAccount, db: Database
) -> None:
    """Given a keyed channel cached with its routes,
    when it is disconnected,
    then the next webhook to its URL is 404, and one on the bare URL routes nowhere."""
    assert await post(client, OLD_SECRET) == 200
    await disconnect(runtime_of(app).db, number)
    assert await post(client, OLD_SECRET) == 404
    assert await messages(db, number.org_id) == 1


async def test_a_rolled_back_change_keeps_the_cache(
    app: Any, client: httpx.AsyncClient, settings: Settings, number: WhatsAppAccount
) -> None:
    """Given a cached channel,
    when a write of its row is rolled back,
    then nothing is announced and the cache still answers (the old secret still verifies)."""
    assert await post(client, OLD_SECRET) == 200
    cache = runtime_of(app).channel_cache
    generation = cache.generation
    with pytest.raises(RuntimeError, match="abandoned"):
        await _abandoned_rotation(runtime_of(app).db, settings, number)
    assert cache.generation == generation
    assert await post(client, OLD_SECRET) == 200


async def _abandoned_rotation(db: Database, settings: Settings, number: WhatsAppAccount) -> None:
    async with db.session(number.org_id) as session:
        account = await session.get(WhatsAppAccount, number.id)
        assert account is not None
        seal(KeyRing.from_settings(settings), account, "app_secret_enc", NEW_SECRET)
        await session.flush()
        raise RuntimeError("abandoned")


async def test_a_change_on_one_process_evicts_the_other_through_redis(
    settings: Settings, number: WhatsAppAccount, db: Database, require_redis: None
) -> None:
    """Given two processes sharing Redis, the second having cached the channel,
    when the first rotates its secret and then disconnects it,
    then the second's next webhook sees each new state."""
    shared = settings.model_copy(update={"redis_url": TEST_REDIS_URL})
    first_app, second_app = create_app(shared), create_app(shared)
    async with (
        lifespan(first_app),
        lifespan(second_app) as second,
        client_of(second.app) as client,
    ):
        first_db = runtime_of(first_app).db
        heard = asyncio.Event()

        async def probe(message: dict[str, Any]) -> None:
            heard.set()  # the cache's own handler runs in the same dispatch, unawaited

        unsubscribe = await runtime_of(second_app).broker.subscribe(CHANNEL, probe)
        assert await post(client, OLD_SECRET) == 200

        # Every process on the test Redis shares CHANNEL, other workers' tests too, and its
        # message names no number: `heard` is reset just before each change, with no webhook
        # (that would cache again) between the reset and the check, so a message from
        # elsewhere can only evict early, never stand in for this change's own.
        heard.clear()
        await rotate(first_db, settings, number)
        async with asyncio.timeout(10):  # the broker's message reaching the second
            await heard.wait()
        assert await post(client, OLD_SECRET) == 401
        assert await post(client, NEW_SECRET) == 200

        heard.clear()
        await disconnect(first_db, number)
        async with asyncio.timeout(10):
            await heard.wait()
        assert await post(client, NEW_SECRET) == 404
        await unsubscribe()
