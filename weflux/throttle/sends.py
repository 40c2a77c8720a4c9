"""Pacing sends per phone number: a token bucket in this process, shared over Redis.

The delivery worker (`weflux.worker.delivery`) acquires a token before each call to the
Cloud API, at the number's throughput (Meta's 80 messages a second by default, 1,000 for
a HIGH throughput number). The `limits` library answers "may this go now?" (hit or
refuse) but has no reservation that tells a caller how long to wait for its turn, which
the worker needs to queue fairly without polling: hence our own bucket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from weflux.redis_errors import redis_errors

if TYPE_CHECKING:  # redis-py is imported only by a process that has WEFLUX_REDIS_URL
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class Throttle(Protocol):
    """Paces sends per phone number."""

    async def acquire(self, key: str, rate: int) -> None:
        """Wait until one more message may go out under `rate` per second for `key`."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class LocalThrottle:
    """A token bucket per number in this process: `rate` a second, bursts of up to `rate`.

    Each caller takes its token at once and sleeps off any deficit, so concurrent
    callers queue fairly without polling.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def reserve(self, key: str, rate: int, now: float | None = None) -> float:
        """Take a token; the seconds to wait before using it."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(rate), updated=now)
        bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        bucket.tokens -= 1
        return -bucket.tokens / rate if bucket.tokens < 0 else 0.0

    async def acquire(self, key: str, rate: int) -> None:
        wait = self.reserve(key, rate)
        if wait > 0:
            await asyncio.sleep(wait)


class RedisThrottle:
    """The local bucket, then a per-second counter in Redis shared by every process.

    When Redis fails the local bucket alone applies (logged at most once a minute): Meta
    answers an excess with 130429, which is retried with backoff anyway.
    """

    def __init__(self, redis: Redis, *, prefix: str = "weflux:wa-throughput") -> None:
        self.redis = redis
        self._errors = redis_errors()
        self.prefix = prefix
        self.local = LocalThrottle()
        self._warned_at: float | None = None

    async def acquire(self, key: str, rate: int) -> None:
        await self.local.acquire(key, rate)
        for _ in range(50):
            now = time.time()
            second = int(now)
            counter = f"{self.prefix}:{key}:{second}"
            try:
                async with asyncio.timeout(1.0):
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.incr(counter)
                        pipe.expire(counter, 5)
                        count, _ = await pipe.execute()
            except self._errors as exc:
                self._warn(exc)
                return
            if int(count) <= rate:
                return
            await asyncio.sleep(max(0.001, second + 1 - time.time()))

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at > 60:
            self._warned_at = now
            log.warning(
                "shared send throttle unavailable; pacing per process only",
                extra={"error": type(exc).__name__},
            )


def build_throttle(redis: Redis | None) -> Throttle:
    return RedisThrottle(redis) if redis is not None else LocalThrottle()
