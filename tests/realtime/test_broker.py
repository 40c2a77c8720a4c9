"""The broker, in-process and on Redis: exact channels, fan-out, reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy.engine import make_url

from tests.fixtures.services import TEST_REDIS_URL, eventually
from tests.fixtures.tasks import tasks_created
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.realtime.broker import Broker, Handler, Message, RedisBroker
from weflux.runtime import create_redis, create_redis_broker


@contextlib.asynccontextmanager
async def _two_processes() -> AsyncIterator[tuple[tuple[RedisBroker, Redis], ...]]:
    """Two started Redis brokers, each on its own client, as two processes would hold."""
    pairs = []
    for _ in range(2):
        redis = create_redis(TEST_REDIS_URL)
        pairs.append((create_redis_broker(TEST_REDIS_URL, redis), redis))
    try:
        for broker, _redis in pairs:
            await broker.start()
        for broker, _redis in pairs:
            await broker.wait_connected()
        yield tuple(pairs)
    finally:
        for broker, redis in pairs:
            await broker.stop()
            await redis.aclose()


def _channel() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_messages_reach_every_subscriber_of_the_channel(broker: Broker) -> None:
    channel, other = _channel(), _channel()
    first: list[Message] = []
    second: list[Message] = []
    elsewhere: list[Message] = []

    async def to(target: list[Message]) -> Handler:
        async def handler(message: Message) -> None:
            target.append(message)

        return handler

    await broker.subscribe(channel, await to(first))
    await broker.subscribe(channel, await to(second))
    await broker.subscribe(other, await to(elsewhere))
    await broker.publish(channel, {"n": 1, "text": "héllo"})
    await eventually(lambda: len(first) == 1 and len(second) == 1)
    assert first == second == [{"n": 1, "text": "héllo"}]
    # a later message on the other channel arrives there first: nothing strayed before it
    await broker.publish(other, {"n": 2})
    await eventually(lambda: len(elsewhere) == 1)
    assert elsewhere == [{"n": 2}]


async def test_unsubscribe_stops_delivery(broker: Broker) -> None:
    channel = _channel()
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    unsubscribe = await broker.subscribe(channel, handler)
    await broker.publish(channel, {"n": 1})
    await eventually(lambda: len(received) == 1)
    await unsubscribe()
    await unsubscribe()  # idempotent
    # a handler still subscribed gets the next message: the removed one got nothing then
    still: list[Message] = []

    async def witness(message: Message) -> None:
        still.append(message)

    await broker.subscribe(channel, witness)
    await broker.publish(channel, {"n": 2})
    await eventually(lambda: still == [{"n": 2}])
    assert received == [{"n": 1}]


async def test_a_failing_handler_does_not_starve_the_others(broker: Broker) -> None:
    channel = _channel()
    received: list[Message] = []

    async def broken(message: Message) -> None:
        raise RuntimeError("boom")

    async def healthy(message: Message) -> None:
        received.append(message)

    await broker.subscribe(channel, broken)
    await broker.subscribe(channel, healthy)
    await broker.publish(channel, {"n": 1})
    await eventually(lambda: received == [{"n": 1}])


async def test_stop_ends_the_reader_even_when_the_redis_client_loses_its_cancellation(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a started Redis broker whose reader's cancellation is swallowed inside the
    Redis client's read (seen under load: a `stop()` waited forever for a reader that was
    cancelling yet reading on), when the broker stops, then its reader still ends, within
    one read's timeout, and `stop()` returns."""
    real = PubSub.get_message
    swallowed: list[bool] = []

    async def losing_a_cancellation(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        try:
            return await real(self, *args, **kwargs)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)
            return None

    monkeypatch.setattr(PubSub, "get_message", losing_a_cancellation)
    redis = create_redis(TEST_REDIS_URL)
    broker = RedisBroker(redis)
    try:
        await broker.start()
        await broker.wait_connected()
        stopping = asyncio.create_task(broker.stop())
        done, _ = await asyncio.wait({stopping}, timeout=10)  # the read's timeout is 1 s
        if not done:
            stopping.cancel()  # stop() goes on to close the connection: the reader ends
        await stopping
    finally:
        await redis.aclose()
    assert swallowed == [True]
    assert done, "stop() waited for a reader that never ended"


async def test_redis_broker_delivers_across_connections(require_redis: None) -> None:
    """Two brokers stand for two processes: a message published by one reaches the other."""
    async with _two_processes() as ((a, _), (b, _)):
        channel = _channel()
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await b.subscribe(channel, handler)
        await a.publish(channel, {"from": "a"})
        await eventually(lambda: received == [{"from": "a"}])


async def test_a_redis_publisher_without_listeners_does_not_hear_its_own_events(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that publishes a workspace's events but has no listener for them (a
    webhook-only process) is not subscribed to their channel on Redis, so it neither
    receives nor decodes nor dispatches them: its cost per event is the PUBLISH alone.
    Once something in it listens, it hears them like every other process."""
    async with _two_processes() as ((a, redis_a), (b, _)):
        channel = _channel()
        heard_by_a: list[str] = []
        dispatch = RedisBroker._dispatch

        async def spy(self: RedisBroker, on: str, message: Message) -> None:
            if self is a:
                heard_by_a.append(on)
            await dispatch(self, on, message)

        monkeypatch.setattr(RedisBroker, "_dispatch", spy)
        received: list[Message] = []

        async def on_b(message: Message) -> None:
            received.append(message)

        await b.subscribe(channel, on_b)
        assert await redis_a.pubsub_numsub(channel) == [(channel.encode(), 1)]
        await a.publish_many([(channel, {"n": 1}), (channel, {"n": 2})])
        await eventually(lambda: received == [{"n": 1}, {"n": 2}])
        await a.publish(channel, {"n": 3})
        await eventually(lambda: len(received) == 3)
        assert heard_by_a == []

        heard: list[Message] = []

        async def on_a(message: Message) -> None:
            heard.append(message)

        await a.subscribe(channel, on_a)
        assert await redis_a.pubsub_numsub(channel) == [(channel.encode(), 2)]
        await a.publish(channel, {"n": 4})
        await eventually(lambda: heard == [{"n": 4}] and received[-1] == {"n": 4})
        assert heard_by_a == [channel]


async def test_a_publish_leaves_from_the_publishing_task(require_redis: None) -> None:
    """Given a process's Redis broker, when a transaction's events are published, then they
    are written to Redis by the publishing task itself, no task created on the way: with a
    socket timeout redis-py bounds each write with `asyncio.wait_for`, which on Python
    3.11 runs it in a task of its own (a task and a turn of the event loop more before
    each event leaves; issue 11, goal 4). The broker bounds each publish itself."""
    async with _two_processes() as ((a, _), (b, _)):
        channel = _channel()
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await b.subscribe(channel, handler)
        await a.publish_many([(channel, {"n": 0})])  # the publisher's connection is open
        with tasks_created() as created:
            await a.publish_many([(channel, {"n": 1}), (channel, {"n": 2})])
            await a.publish(channel, {"n": 3})
        assert created == []
        await eventually(lambda: received == [{"n": n} for n in range(4)])


async def test_redis_broker_reconnects_resubscribes_and_reports_it(require_redis: None) -> None:
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    redis = create_redis(f"redis://127.0.0.1:{proxy.port}/{url.database or 0}")
    publisher = create_redis(TEST_REDIS_URL)
    broker = RedisBroker(redis, backoff_base=0.02, backoff_cap=0.2)
    await broker.start()
    try:
        await broker.wait_connected()
        channel = _channel()
        received: list[Message] = []
        reconnections: list[int] = []

        async def handler(message: Message) -> None:
            received.append(message)

        async def on_reconnect() -> None:
            reconnections.append(1)

        await broker.subscribe(channel, handler)
        broker.on_reconnect(on_reconnect)

        await proxy.cut()
        await eventually(lambda: not broker.connected)
        await proxy.restore()
        await eventually(lambda: broker.connected and reconnections == [1], seconds=10)

        await publisher.publish(channel, '{"after": "reconnect"}')
        await eventually(lambda: received == [{"after": "reconnect"}])
    finally:
        await broker.stop()
        await redis.aclose()
        await publisher.aclose()
        await proxy.close()


async def test_malformed_messages_are_dropped(require_redis: None) -> None:
    redis = create_redis(TEST_REDIS_URL)
    broker = RedisBroker(redis)
    await broker.start()
    try:
        await broker.wait_connected()
        channel = _channel()
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await broker.subscribe(channel, handler)
        await redis.publish(channel, "{not json")
        await broker.publish(channel, {"ok": True})
        await eventually(lambda: received == [{"ok": True}])
    finally:
        await broker.stop()
        await redis.aclose()


async def test_a_blip_that_redis_py_retries_silently_is_still_reported(
    require_redis: None,
) -> None:
    """Given a subscribed broker, when the connection drops and comes back at once (redis-py's
    own retry reconnects and resubscribes without raising), then the broker still reports the
    reconnection: messages published in the gap were missed and views must catch up."""
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    redis = create_redis(f"redis://127.0.0.1:{proxy.port}/{url.database or 0}")
    publisher = create_redis(TEST_REDIS_URL)
    broker = RedisBroker(redis, backoff_base=0.02, backoff_cap=0.2)
    await broker.start()
    try:
        await broker.wait_connected()
        channel = _channel()
        received: list[Message] = []
        reconnections: list[int] = []

        async def handler(message: Message) -> None:
            received.append(message)

        async def on_reconnect() -> None:
            reconnections.append(1)

        await broker.subscribe(channel, handler)
        broker.on_reconnect(on_reconnect)

        await proxy.cut()
        await proxy.restore()
        await eventually(lambda: reconnections == [1], seconds=10)

        await publisher.publish(channel, '{"after": "blip"}')
        await eventually(lambda: received == [{"after": "blip"}])
        assert reconnections == [1]
    finally:
        await broker.stop()
        await redis.aclose()
        await publisher.aclose()
        await proxy.close()


async def test_a_task_woken_by_a_message_runs_before_the_next_message_is_handled(
    require_redis: None,
) -> None:
    # given: two events published in one pipeline (as a transaction's are), arriving together
    async with _two_processes() as ((publisher, _), (receiver, _redis)):
        channel = _channel()
        order: list[str] = []
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def handler(message: Message) -> None:
            order.append(f"handled {message['n']}")
            if message["n"] == 1:
                woken.set_result(None)  # as the hub wakes a subscriber's task

        async def subscriber() -> None:
            await woken
            order.append("woken")

        task = asyncio.create_task(subscriber())
        await receiver.subscribe(channel, handler)
        # when
        await publisher.publish_many([(channel, {"n": 1}), (channel, {"n": 2})])
        await eventually(lambda: len(order) == 3)
        await task
    # then: the subscriber woken by the first ran before the second was parsed and handled
    assert order == ["handled 1", "woken", "handled 2"]
