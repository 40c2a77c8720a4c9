"""The hub: a listener queues only the events it handles (and RESYNC), on both brokers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest

from tests.fixtures.services import TEST_REDIS_URL
from weflux.realtime.broker import Broker, InProcessBroker, RedisBroker
from weflux.realtime.events import EventName, workspace_channel
from weflux.realtime.hub import RESYNC, Hub, Member, Sharing, next_event, sharing
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


async def test_a_sharing_lets_its_task_go_but_not_a_restarts() -> None:
    """Given an operation's sharing block open in one task,
    when its restart enters a block with the same sharing before the first one ends,
    then the restart's task stays named (its listener is adopted through it) when the
    first block ends, and none once the restart's ends (a finished task is not held)."""
    share = Sharing(key=lambda: None, member=cast("Member", None))
    first_inside, first_done, restart_inside = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        with sharing(share):
            first_inside.set()
            await restart_inside.wait()
        first_done.set()

    async def restart() -> asyncio.Task[object] | None:
        await first_inside.wait()
        with sharing(share):
            restart_inside.set()
            await first_done.wait()
            return share.task

    ending = asyncio.create_task(first())
    restarted = asyncio.create_task(restart())
    assert await restarted is restarted
    await ending
    assert share.task is None
