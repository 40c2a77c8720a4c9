"""The Redis broker's subscription notices a Redis that stopped answering without a reset
(a network partition, a host gone): it pings when quiet, reconnects when the answer never
comes, and its listeners catch up once Redis answers again."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio.client import PubSub
from sqlalchemy.engine import make_url

from tests.fixtures.logs import capture_logs
from tests.fixtures.services import TEST_REDIS_URL, eventually
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.realtime import broker as broker_module
from weflux.realtime.broker import Message, RedisBroker
from weflux.runtime import create_redis

QUIET = 0.3  # the test's QUIET_PING and PING_TIMEOUT (5 s each by default)
# Before the fix a silent subscription stayed "connected" for as long as TCP allowed
# (minutes): far longer than this.
NOTICED_WITHIN = 15.0


async def test_a_subscription_whose_redis_went_silent_reconnects_and_its_listeners_catch_up(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a broker subscribed through a proxy, when the proxy silences every
    connection (no reset), then within the quiet ping and its timeout the broker takes its
    subscription for lost (and says so); when Redis answers again it reconnects, its
    reconnect listeners are told (they catch up from the database), and messages published
    then reach its subscribers."""
    monkeypatch.setattr(broker_module, "QUIET_PING", QUIET)
    monkeypatch.setattr(broker_module, "PING_TIMEOUT", QUIET)
    pings: list[int] = []
    ping = PubSub.ping

    async def counted(self: PubSub, *args: Any) -> Any:
        pings.append(1)
        return await ping(self, *args)

    monkeypatch.setattr(PubSub, "ping", counted)
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    redis = create_redis(f"redis://127.0.0.1:{proxy.port}/{url.database or 0}")
    broker = RedisBroker(redis, backoff_base=0.05, backoff_cap=0.5)
    publisher_redis = create_redis(TEST_REDIS_URL)
    reconnections: list[int] = []
    received: list[Message] = []

    async def reconnected() -> None:
        reconnections.append(1)

    async def handler(message: Message) -> None:
        received.append(message)

    broker.on_reconnect(reconnected)
    channel = f"test:{uuid.uuid4().hex}"
    await broker.start()
    try:
        await broker.wait_connected()
        await broker.subscribe(channel, handler)
        # A second PING is sent only once the first was answered: a quiet, healthy
        # subscription stays up.
        await eventually(lambda: len(pings) >= 2, seconds=NOTICED_WITHIN)
        assert broker.connected
        assert reconnections == []

        with capture_logs() as logs:
            await proxy.partition()
            await eventually(lambda: not broker.connected, seconds=NOTICED_WITHIN)
        assert "broker connection lost" in logs.text

        await proxy.restore()
        await eventually(lambda: reconnections == [1], seconds=NOTICED_WITHIN)
        async with asyncio.timeout(NOTICED_WITHIN):
            while not received:  # until the resubscribed channel hears a publish
                await publisher_redis.publish(channel, '{"n": 1}')
                await asyncio.sleep(0.05)
        assert received[0] == {"n": 1}
    finally:
        await broker.stop()
        await redis.aclose()
        await publisher_redis.aclose()
        await proxy.close()
