"""Leaky buckets of points: charge, refuse, restore, all or nothing, shared, failing open.

Time is a fake clock handed to the buckets, in memory and in Redis alike: no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from tests.fixtures.services import TEST_REDIS_URL, redis_problem, require
from tests.fixtures.settings import make_settings
from tests.fixtures.tasks import tasks_created
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.config import ConfigError
from weflux.gql.budgets import CostBudgets
from weflux.throttle.leaky_bucket import Bucket, BucketSpec, LeakyBuckets, parse_bucket
from weflux.throttle.ratelimit import DECISION_TIMEOUT

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"
TEN_A_SECOND = BucketSpec(capacity=100, restore_rate=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key_prefix() -> str:
    return f"weflux-test-{uuid.uuid4().hex}"


@pytest.fixture(params=["memory", "redis"])
async def make_buckets(
    request: pytest.FixtureRequest, clock: Clock, key_prefix: str
) -> AsyncIterator[Callable[[], LeakyBuckets]]:
    """Buckets in this process, or in Redis (several instances share them)."""
    url = None
    if request.param == "redis":
        require(redis_problem(), "WEFLUX_TEST_REDIS_URL")
        url = TEST_REDIS_URL
    made: list[LeakyBuckets] = []

    def factory() -> LeakyBuckets:
        made.append(LeakyBuckets(url, key_prefix=key_prefix, clock=clock))
        return made[-1]

    yield factory
    for buckets in made:
        await buckets.close()
    if url is not None:
        client = Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_bucket_is_charged_until_spent_then_refuses_without_charging(
    make_buckets: Callable[[], LeakyBuckets],
) -> None:
    buckets = make_buckets()
    one = [Bucket("member:a", TEN_A_SECOND)]
    # Given a full bucket of 100, when 60 then 30 points are charged, then both pass
    first = await buckets.charge(one, 60)
    assert first.allowed
    assert first.tightest is not None
    assert first.tightest.remaining == 40
    assert (await buckets.charge(one, 30)).allowed
    # When 20 more are asked with 10 left, then it is refused, saying when it would pass
    refused = await buckets.charge(one, 20)
    assert not refused.allowed
    assert refused.retry_after == 1  # 10 points missing at 10 a second
    assert refused.tightest is not None
    assert refused.tightest.remaining == 10  # nothing was taken


async def test_a_bucket_restores_at_its_rate_up_to_its_capacity(
    make_buckets: Callable[[], LeakyBuckets], clock: Clock
) -> None:
    buckets = make_buckets()
    one = [Bucket("member:a", TEN_A_SECOND)]
    assert (await buckets.charge(one, 100)).allowed
    assert not (await buckets.charge(one, 50)).allowed
    # 5 seconds later, 50 points are back
    clock.now += 5
    restored = await buckets.charge(one, 50)
    assert restored.allowed
    # An hour later, the bucket is full again, not more
    clock.now += 3600
    peek = await buckets.charge(one, 0)
    assert peek.tightest is not None
    assert peek.tightest.remaining == 100


async def test_several_buckets_are_charged_all_or_nothing(
    make_buckets: Callable[[], LeakyBuckets],
) -> None:
    buckets = make_buckets()
    workspace = Bucket("workspace:w", BucketSpec(capacity=1000, restore_rate=1.0))
    member_a = Bucket("member:a", BucketSpec(capacity=100, restore_rate=1.0))
    member_b = Bucket("member:b", BucketSpec(capacity=100, restore_rate=1.0))
    # Given member a spent their bucket
    assert (await buckets.charge([workspace, member_a], 100)).allowed
    # When a asks again, then it is refused, and the workspace is not charged for it
    refused = await buckets.charge([workspace, member_a], 10)
    assert not refused.allowed
    assert refused.retry_after == 10
    after_b = await buckets.charge([workspace, member_b], 0)
    assert [level.remaining for level in after_b.levels] == [900, 100]
    # The tightest bucket is the one with the fewest points left
    assert refused.tightest is not None
    assert refused.tightest.spec.capacity == 100


async def test_processes_sharing_redis_share_the_buckets(
    clock: Clock, key_prefix: str, require_redis: None
) -> None:
    one = LeakyBuckets(TEST_REDIS_URL, key_prefix=key_prefix, clock=clock)
    other = LeakyBuckets(TEST_REDIS_URL, key_prefix=key_prefix, clock=clock)
    bucket = [Bucket("member:a", TEN_A_SECOND)]
    try:
        # Given one process spent the bucket, then another is refused
        assert (await one.charge(bucket, 100)).allowed
        assert not (await other.charge(bucket, 1)).allowed
    finally:
        await one.close()
        await other.close()


async def test_an_unreachable_redis_fails_open_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buckets = LeakyBuckets(UNREACHABLE_REDIS_URL)
    try:
        with caplog.at_level(logging.WARNING, logger="weflux.throttle.leaky_bucket"):
            charges = [await buckets.charge([Bucket("member:a", TEN_A_SECOND)], 500)]
            charges.append(await buckets.charge([Bucket("member:a", TEN_A_SECOND)], 500))
    finally:
        await buckets.close()
    assert all(charge.allowed for charge in charges)
    assert all(charge.tightest is None for charge in charges)  # remaining: unknown
    warnings = [r for r in caplog.records if r.name == "weflux.throttle.leaky_bucket"]
    assert len(warnings) == 1
    assert "without a budget" in warnings[0].getMessage()


async def test_a_charge_creates_no_task(make_buckets: Callable[[], LeakyBuckets]) -> None:
    """Given buckets whose store is open, when a charge is made, then its Redis command runs
    in the caller's task: the client has no socket timeout, whose `asyncio.wait_for` runs
    each write in a task of its own on Python 3.11; the charge is bounded by
    `DECISION_TIMEOUT` itself."""
    buckets = make_buckets()
    await buckets.charge([Bucket("member:tasks", TEN_A_SECOND)], 1)  # the connection is open
    with tasks_created() as created:
        charge = await buckets.charge([Bucket("member:tasks", TEN_A_SECOND)], 1)
    assert charge.allowed is True
    assert created == []


async def test_a_redis_that_never_answers_fails_open_within_the_decision_bound(
    require_redis: None, clock: Clock, key_prefix: str
) -> None:
    """Given buckets on a Redis that takes requests and never answers, when a charge is
    made, then it is allowed, remaining unknown, after `DECISION_TIMEOUT` (not held for
    ever); once Redis answers again the charges are answered again."""
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    buckets = LeakyBuckets(
        f"redis://127.0.0.1:{proxy.port}/{url.database or 0}", key_prefix=key_prefix, clock=clock
    )
    bucket = Bucket("member:stalled", TEN_A_SECOND)
    try:
        assert (await buckets.charge([bucket], 10)).tightest is not None
        await proxy.deafen()
        loop = asyncio.get_running_loop()
        started = loop.time()
        charge = await buckets.charge([bucket], 10)
        assert DECISION_TIMEOUT - 0.1 <= loop.time() - started <= DECISION_TIMEOUT + 0.5
        assert charge.allowed is True
        assert charge.tightest is None
        await proxy.restore()
        assert (await buckets.charge([bucket], 10)).tightest is not None
    finally:
        await buckets.close()
        await proxy.close()
        client = Redis.from_url(TEST_REDIS_URL)
        await client.delete(f"{key_prefix}:member:stalled")
        await client.aclose()


@pytest.mark.parametrize(
    ("text", "capacity", "rate"),
    [
        ("20000:200/second", 20000, 200.0),
        ("1000:50/s", 1000, 50.0),
        (" 600 : 60 / minute ", 600, 1.0),
        ("3600:1.5/hour", 3600, 1.5 / 3600),
    ],
)
def test_budgets_are_written_capacity_colon_restore_rate(
    text: str, capacity: int, rate: float
) -> None:
    assert parse_bucket("WEFLUX_X", text) == BucketSpec(capacity=capacity, restore_rate=rate)


@pytest.mark.parametrize("text", ["", "1000", "1000/second", "1000:50", "0:1/s", "10:0/s", "a:b/s"])
def test_a_malformed_budget_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_RATE_LIMIT_GRAPHQL_COST_MEMBER"):
        parse_bucket("WEFLUX_RATE_LIMIT_GRAPHQL_COST_MEMBER", text)


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"rate_limit_graphql_cost_member": "5000:10/second"}, "COST_MEMBER"),
        ({"rate_limit_graphql_cost_workspace": "10009:10/second"}, "COST_WORKSPACE"),
        ({"graphql_max_nodes": 50_000}, "COST_MEMBER"),
        ({"rate_limit_graphql_cost_member": "ten"}, "COST_MEMBER"),
    ],
)
def test_a_budget_smaller_than_one_operation_can_cost_is_refused(
    tmp_path: Path, overrides: dict[str, Any], variable: str
) -> None:
    # Given a bucket that could never hold the most one operation may cost (max nodes + 10)
    settings = make_settings(tmp_path, **overrides)
    # Then the app refuses to start, naming the variable
    with pytest.raises(ConfigError, match=f"WEFLUX_RATE_LIMIT_GRAPHQL_{variable}"):
        CostBudgets(settings)
