"""The hub: a listener queues only the events it handles (and RESYNC), on both brokers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.fixtures.services import TEST_REDIS_URL
from weflux.realtime.broker import Broker, InProcessBroker, RedisBroker
from weflux.realtime.events import EventName, workspace_channel
from weflux.realtime.hub import RESYNC, Hub, next_event
from weflux.runtime import create_redis


@pytest.fixture(params=["memory", "redis"])
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    broker: Broker
    if request.param == "memory":
        broker = InProcessBroker()
    else:
        request.getfixturevalue("require_redis")
        redis = create_redis(TEST_REDIS_URL)
        broker = RedisBroker(redis)
        await broker.start()
        await broker.wait_connected()
    instance = Hub(broker)
    await instance.start()
    yield instance
    await instance.stop()
    if isinstance(broker, RedisBroker):
        await broker.stop()
        await redis.aclose()


async def test_a_listener_is_offered_only_the_events_it_handles_and_resync(hub: Hub) -> None:
    # given: one listener of messageAdded only, one of every event, in one workspace
    org_id = uuid.uuid4()
    channel = workspace_channel(org_id)
    async with (
        hub.listen(org_id, events=(EventName.MESSAGE_ADDED,)) as added,
        hub.listen(org_id) as every,
    ):
        # when: other events, then a messageAdded, a broker reconnection, a RESYNC event
        for name in (EventName.CONVERSATION_UPDATED, EventName.MESSAGE_UPDATED):
            await hub.broker.publish(channel, {"event": name, "id": "x"})
        await hub.broker.publish(channel, {"event": EventName.MESSAGE_ADDED, "id": "m"})
        # then: the first receives its event and both resyncs, nothing else queued
        first = await next_event(added, timeout=5)
        assert first == {"event": EventName.MESSAGE_ADDED, "id": "m"}
        await hub._on_reconnect()
        assert await next_event(added, timeout=5) is RESYNC
        await hub.broker.publish(channel, {"event": EventName.RESYNC})
        assert await next_event(added, timeout=5) == {"event": EventName.RESYNC}
        assert added.queue.empty()
        # the other, everything in order
        names = [(await next_event(every, timeout=5) or {}).get("event") for _ in range(5)]
        assert names == [
            EventName.CONVERSATION_UPDATED,
            EventName.MESSAGE_UPDATED,
            EventName.MESSAGE_ADDED,
            EventName.RESYNC,
            EventName.RESYNC,
        ]
