"""The Redis broker's kept events: published on reconnection, and retried on a timer while
the subscription stays up, oldest first, each once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.logs import capture_logs
from tests.fixtures.services import TEST_REDIS_URL, eventually
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.backoff import exponential_backoff
from weflux.realtime import broker as broker_module
from weflux.realtime.broker import Message, RedisBroker
from weflux.runtime import create_redis

# What the publisher logs once it has published its kept events, some of them dropped.
PUBLISHED_KEPT = "broker published its kept events; the oldest were dropped"


async def test_events_published_while_redis_is_away_go_out_on_reconnection(
    require_redis: None,
) -> None:
    async with _publisher_behind_a_proxy(backoff_base=0.02, backoff_cap=0.2) as outage:
        proxy, publisher, channel, received = outage
        await proxy.cut()
        await publisher.publish(channel, {"n": 1})  # kept, not lost, not raised
        await proxy.restore()
        await eventually(lambda: received == [{"n": 1}], seconds=10)


async def test_events_kept_during_an_outage_go_out_once_each_in_order_when_publishes_race(
    require_redis: None,
) -> None:
    """Given events kept while Redis was away, when Redis is back and two publishes run at
    once (two webhooks' commits; the reader's reconnection flushes the same way), then every
    kept event goes out, in order, before the new ones, and none twice: two flushers of
    the same list used to publish its first event twice and drop the second unpublished."""
    # A reader that waits long before reconnecting: only the publishes flush here.
    async with _publisher_behind_a_proxy(backoff_base=60, backoff_cap=60) as outage:
        proxy, publisher, channel, received = outage
        await proxy.cut()
        await _publish(publisher, channel, 1, 2, 3)  # kept
        await proxy.restore()
        await asyncio.gather(
            publisher.publish(channel, {"n": 4}), publisher.publish(channel, {"n": 5})
        )
        await publisher.publish(channel, {"n": 6})
        await eventually(lambda: {"n": 6} in received, seconds=10)
        assert received == [{"n": n} for n in range(1, 7)]


async def test_an_event_kept_while_the_subscription_stays_up_goes_out_without_a_later_publish(
    require_redis: None,
) -> None:
    """Given events kept after failed publishes while the broker's subscription stayed up
    (Redis refused new connections: no reconnection will flush them), when Redis accepts
    again, then they go out on their own within the retry's backoff, in order, each once,
    and a later publish comes after them. They used to wait for the next publish."""
    async with _publisher_behind_a_proxy(backoff_base=0.05, backoff_cap=0.5) as outage:
        proxy, publisher, channel, received = outage
        await proxy.refuse()
        await _publish(publisher, channel, 1, 2, 3)  # kept
        assert publisher.connected  # the subscription never dropped
        await proxy.restore()
        await eventually(lambda: len(received) >= 3, seconds=10)
        await publisher.publish(channel, {"n": 4})
        await eventually(lambda: {"n": 4} in received, seconds=10)
        assert received == [{"n": n} for n in range(1, 5)]


async def test_kept_events_retried_while_publishes_keep_coming_go_out_once_each_in_order(
    require_redis: None,
) -> None:
    """Given events kept while Redis refused connections, when it accepts again and the
    retry (a short backoff) races a stream of publishes, then every event goes out once,
    in the order it was published."""
    async with _publisher_behind_a_proxy(backoff_base=0.001, backoff_cap=0.005) as outage:
        proxy, publisher, channel, received = outage
        await proxy.refuse()
        await _publish(publisher, channel, 1, 2, 3)  # kept
        await proxy.restore()
        for n in range(4, 60):
            await publisher.publish(channel, {"n": n})
            await asyncio.sleep(0.001)  # the retry's timer fires between publishes
        await eventually(lambda: {"n": 59} in received, seconds=10)
        assert received == [{"n": n} for n in range(1, 60)]


async def test_stop_ends_the_retry_while_redis_refuses(require_redis: None) -> None:
    """Given an event kept and retried while Redis refuses connections, when the broker
    stops, then the retry ends with it: no task is left behind."""
    async with _publisher_behind_a_proxy(backoff_base=0.01, backoff_cap=0.05) as outage:
        proxy, publisher, channel, _received = outage
        await proxy.refuse()
        await publisher.publish(channel, {"n": 1})  # kept, retried
        retrying = [t for t in asyncio.all_tasks() if t.get_name() == "weflux-broker-retry"]
        assert retrying
        await publisher.stop()
        assert all(task.done() for task in retrying)


async def test_while_redis_stays_away_each_retry_waits_longer_up_to_the_cap(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an event kept while Redis refuses connections for a while, when the retry
    fails again and again, then before each attempt it waits a jittered delay of at least
    the base, drawn for one more failure each time (its ceiling doubles up to the cap): no
    hot loop. When Redis is back the event goes out once."""
    draws: list[tuple[int, float, float, float]] = []

    def recorded(attempt: int, *, base: float, cap: float, floor: float = 0.0) -> float:
        draws.append((attempt, base, cap, floor))
        return exponential_backoff(attempt, base=base, cap=cap, floor=floor)

    monkeypatch.setattr(broker_module, "exponential_backoff", recorded)
    async with _publisher_behind_a_proxy(backoff_base=0.01, backoff_cap=0.04) as outage:
        proxy, publisher, channel, received = outage
        await proxy.refuse()
        await _publish(publisher, channel, 1)  # kept, retried
        await eventually(lambda: len(draws) >= 4, seconds=20)
        await proxy.restore()
        await eventually(lambda: received == [{"n": 1}], seconds=10)
    assert [attempt for attempt, *_ in draws[:4]] == [1, 2, 3, 4]
    assert {draw[1:] for draw in draws[:4]} == {(0.01, 0.04, 0.01)}  # base, cap, floor


async def test_past_the_limit_the_oldest_kept_events_are_dropped_and_said(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a broker that keeps at most 3 events, when 5 are kept while Redis refuses
    connections and Redis comes back, then the newest 3 go out, in order, and the log says
    that the oldest were dropped, and how many."""
    monkeypatch.setattr(broker_module, "UNSENT_LIMIT", 3)
    with capture_logs() as logs:
        async with _publisher_behind_a_proxy(backoff_base=0.05, backoff_cap=0.5) as outage:
            proxy, publisher, channel, received = outage
            await proxy.refuse()
            await _publish(publisher, channel, 1, 2, 3, 4, 5)  # kept: the last 3
            await proxy.restore()
            # Both ends: the listener can hear the last event before the publisher has read
            # Redis's reply to it, and stopping then cancels the publish, put back unsaid.
            await eventually(
                lambda: {"n": 5} in received and PUBLISHED_KEPT in logs.text, seconds=10
            )
            assert received == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert "broker kept events over the limit" in logs.text
    assert '"dropped": 2' in logs.text


async def test_an_event_in_flight_when_the_limit_is_passed_is_the_oldest_and_dropped_first(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a broker that keeps at most 3 events, retrying a kept event through a Redis that
    never answers (the event is out of the list, in flight), when 4 more are published
    meanwhile and then its publish gives up, then it is the oldest of 5 and dropped with
    the next oldest: the newest 3 go out and the log says 2 were dropped. Put back in front
    of the trimmed list, it went out ahead of 3 newer ones, and the list passed its limit."""
    monkeypatch.setattr(broker_module, "UNSENT_LIMIT", 3)
    monkeypatch.setattr(broker_module, "PUBLISH_TIMEOUT", 1.0)
    with capture_logs() as logs:
        async with _publisher_behind_a_proxy(
            backoff_base=0.05, backoff_cap=0.2, publishes_only=True
        ) as outage:
            proxy, publisher, channel, received = outage
            await proxy.deafen()
            await _publish(publisher, channel, 1)  # kept, retried
            attempts = proxy.accepted
            # The retry's attempt reaches the proxy: event 1 is in flight, for a second
            await eventually(lambda: proxy.accepted > attempts, seconds=10)
            await _publish(publisher, channel, 2, 3, 4, 5)  # kept: 3 of them
            await eventually(lambda: "broker retry failed" in logs.text, seconds=10)  # 1 is back
            await proxy.restore()
            await eventually(
                lambda: {"n": 5} in received and PUBLISHED_KEPT in logs.text, seconds=15
            )
            assert received == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert '"dropped": 2' in logs.text


async def _publish(publisher: RedisBroker, channel: str, *numbers: int) -> None:
    for n in numbers:
        await publisher.publish(channel, {"n": n})


@contextlib.asynccontextmanager
async def _publisher_behind_a_proxy(
    *, backoff_base: float, backoff_cap: float, publishes_only: bool = False
) -> AsyncIterator[tuple[TcpProxy, RedisBroker, str, list[Message]]]:
    """A publishing broker that reaches Redis through a proxy a test can cut, and what a
    second broker, connected directly, receives on the channel. `publishes_only`: the
    broker's own subscription is direct, its publishes (their own client) pass the proxy."""
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    proxied = create_redis(f"redis://127.0.0.1:{proxy.port}/{url.database or 0}")
    publisher_redis = create_redis(TEST_REDIS_URL) if publishes_only else proxied
    publisher = RedisBroker(
        publisher_redis,
        publisher=proxied if publishes_only else None,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
    )
    listener_redis = create_redis(TEST_REDIS_URL)
    listener = RedisBroker(listener_redis)
    await publisher.start()
    await listener.start()
    try:
        await publisher.wait_connected()
        await listener.wait_connected()
        channel = f"test:{uuid.uuid4().hex}"
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await listener.subscribe(channel, handler)
        yield proxy, publisher, channel, received
    finally:
        for broker, redis in ((publisher, publisher_redis), (listener, listener_redis)):
            await broker.stop()
            await redis.aclose()
        await proxy.close()


async def test_a_publish_redis_never_answers_gives_up_in_time_and_its_events_are_kept(
    require_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a broker whose publisher has no socket timeout (`create_redis_broker`: the
    broker bounds each publish itself), when Redis takes a publish and never answers (a
    stalled server), then the publish gives up after `PUBLISH_TIMEOUT`, its event kept, and
    the event goes out once Redis answers again."""
    monkeypatch.setattr(broker_module, "PUBLISH_TIMEOUT", 0.5)
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    redis = create_redis(TEST_REDIS_URL)
    publisher = RedisBroker(
        redis,
        publisher=create_redis(
            f"redis://127.0.0.1:{proxy.port}/{url.database or 0}", socket_timeout=None
        ),
        backoff_base=0.05,
        backoff_cap=0.2,
    )
    listener_redis = create_redis(TEST_REDIS_URL)
    listener = RedisBroker(listener_redis)
    try:
        await publisher.start()
        await listener.start()
        await publisher.wait_connected()
        await listener.wait_connected()
        channel = f"test:{uuid.uuid4().hex}"
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await listener.subscribe(channel, handler)
        await proxy.deafen()
        async with asyncio.timeout(3):  # not the 5 s of a socket timeout, nor forever
            await publisher.publish(channel, {"n": 1})
        await proxy.restore()
        await eventually(lambda: received == [{"n": 1}], seconds=10)
    finally:
        for broker, client in ((publisher, redis), (listener, listener_redis)):
            await broker.stop()
            await client.aclose()
        await proxy.close()
