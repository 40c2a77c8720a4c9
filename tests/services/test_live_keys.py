"""The live webhook keys' digests: trusted only while they can be current.

weflux.services.live_keys refuses a webhook key whose digest no live number has without
a read; before its first load, while the broker is disconnected, after a reconnection
(messages may have been missed) and after a change, it says "may be live" and the
lookup is made as before.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from tests.fixtures.factories import Actor, create_whatsapp_account
from tests.fixtures.services import TEST_REDIS_URL, eventually
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.db import Database
from weflux.models import WhatsAppAccount
from weflux.realtime.broker import InProcessBroker, RedisBroker
from weflux.runtime import create_redis
from weflux.services.channel_cache import ChannelCache
from weflux.services.live_keys import LiveKeys


async def live_number(db: Database, admin: Actor, **overrides: object) -> WhatsAppAccount:
    async with db.session(admin.org_id) as session:
        return await create_whatsapp_account(session, org_id=admin.org_id, **overrides)


@pytest.fixture
async def cache() -> AsyncIterator[ChannelCache]:
    cache = ChannelCache(InProcessBroker())
    await cache.start()
    yield cache
    await cache.stop()


async def test_only_live_keys_are_held_once_loaded(
    db: Database, admin: Actor, cache: ChannelCache
) -> None:
    """Given a live number and a disconnected one,
    when the keys are asked for before and after their first load,
    then before it any key may be live; after it only the live number's key is, in 8 bytes."""
    live = await live_number(db, admin)
    gone = await live_number(db, admin, disconnected_at=live.credentials_updated_at)
    keys = LiveKeys(db, cache)
    assert not keys.current
    assert keys.may_be_live(secrets.token_urlsafe(24))
    await keys.load()
    assert keys.current
    assert (len(keys), keys.nbytes) == (1, 8)
    assert keys.may_be_live(live.webhook_key)
    assert not keys.may_be_live(gone.webhook_key)
    assert not keys.may_be_live(secrets.token_urlsafe(24))
    await keys.stop()


async def test_a_change_while_loading_is_not_trusted(
    db: Database, admin: Actor, cache: ChannelCache
) -> None:
    """Given keys loading, when a change is heard before the load ends,
    then the load is dropped (it may be stale) and any key may be live."""
    await live_number(db, admin)
    keys = LiveKeys(db, cache)

    def heard(*_: Any) -> None:
        cache.clear()  # as the broker's message does, mid-load

    event.listen(db.engine.sync_engine, "before_cursor_execute", heard, once=True)
    await keys.load()
    assert not keys.current
    assert keys.may_be_live(secrets.token_urlsafe(24))
    await keys.stop()


@pytest.fixture
async def proxied(require_redis: None) -> AsyncIterator[tuple[TcpProxy, RedisBroker]]:
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    redis = create_redis(f"redis://127.0.0.1:{proxy.port}/{url.database or 0}")
    broker = RedisBroker(redis, backoff_base=0.02, backoff_cap=0.2)
    await broker.start()
    try:
        await broker.wait_connected()
        yield proxy, broker
    finally:
        await broker.stop()
        await redis.aclose()
        await proxy.close()


async def test_the_broker_down_falls_back_to_reads(
    db: Database, admin: Actor, proxied: tuple[TcpProxy, RedisBroker]
) -> None:
    """Given keys loaded over a Redis broker,
    when the broker's connection is cut, and when it comes back,
    then neither while it is down nor after it reconnects (changes may have been missed)
    is an unknown key refused, until the keys are loaded again."""
    proxy, broker = proxied
    cache = ChannelCache(broker)
    await cache.start()
    keys = LiveKeys(db, cache)
    unknown = secrets.token_urlsafe(24)
    try:
        await keys.load()
        assert not keys.may_be_live(unknown)
        generation = cache.generation
        await proxy.cut()
        await eventually(lambda: not broker.connected)
        assert keys.may_be_live(unknown)
        await keys.load()  # no load while the changes cannot be heard
        assert not keys.current
        await proxy.restore()
        await eventually(lambda: broker.connected, seconds=10)
        await eventually(lambda: cache.generation > generation, seconds=10)  # the reconnection's
        assert keys.may_be_live(unknown)
        await keys.load()
        assert not keys.may_be_live(unknown)
    finally:
        await keys.stop()
        await cache.stop()
