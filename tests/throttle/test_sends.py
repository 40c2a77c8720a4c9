"""Pacing sends per number: the local token bucket and the counter shared in Redis."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.throttle import FrozenThrottle
from weflux.runtime import create_redis
from weflux.throttle.sends import LocalThrottle, RedisThrottle
from weflux.worker.delivery import HIGH_THROUGHPUT, STANDARD_THROUGHPUT


def test_the_token_bucket_allows_the_numbers_throughput() -> None:
    throttle = LocalThrottle()
    waits = [throttle.reserve("standard", STANDARD_THROUGHPUT, now=100.0) for _ in range(81)]
    assert waits[:80] == [0.0] * 80
    assert waits[80] == pytest.approx(1 / STANDARD_THROUGHPUT)
    # A second later the bucket is full again.
    assert throttle.reserve("standard", STANDARD_THROUGHPUT, now=101.1) == 0.0
    high = [throttle.reserve("high", HIGH_THROUGHPUT, now=100.0) for _ in range(1001)]
    assert high[999] == 0.0
    assert high[1000] == pytest.approx(1 / HIGH_THROUGHPUT)


async def test_the_shared_throttle_counts_in_redis(require_redis: None) -> None:
    redis = create_redis(TEST_REDIS_URL)
    prefix = f"weflux-test:{uuid.uuid4().hex}"
    try:
        throttle = RedisThrottle(redis, prefix=prefix)
        throttle.local = local = FrozenThrottle()
        for _ in range(4):
            await throttle.acquire("106540352242922", 3)
        # The fourth had to wait (the local bucket allows a burst of 3, then 3 a second)
        assert local.waits == pytest.approx([0, 0, 0, 1 / 3])
        assert max(local.waits) >= 0.3
        # and every send was counted in Redis, per second
        counted = 0
        async for key in redis.scan_iter(match=f"{prefix}:*"):
            counted += int(await redis.get(key) or 0)
        assert counted >= 4
    finally:
        await redis.aclose()
