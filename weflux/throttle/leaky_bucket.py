"""Leaky buckets of points, kept in Redis (atomic, one Lua script) or in memory without it.

A bucket holds up to `capacity` points and refills at `restore_rate` points a second
(Shopify's GraphQL cost limit). A charge takes points from one or several buckets at
once, all or nothing: when any of them holds too few, none is charged and the answer
says how long until all of them hold enough.

Like the request limiter (`weflux.throttle.ratelimit`), a Redis that fails costs a charge at
most `DECISION_TIMEOUT` and then fails open: the charge is allowed, its remaining points
are unknown (None), and a warning is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weflux.config import ConfigError
from weflux.redis_errors import redis_errors
from weflux.throttle.ratelimit import (
    DECISION_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    StorageWarning,
    plain_key,
)

if TYPE_CHECKING:  # redis-py is imported only by a process that has WEFLUX_REDIS_URL
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

MEMORY_BUCKETS = 100_000  # past this many, buckets that are full again are forgotten

_SPEC = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(second|minute|hour|s|m|h)\s*$")
_UNITS = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600}

# KEYS: the buckets. ARGV: now (seconds), points, then capacity and rate of each bucket.
# Answers {allowed (0/1), wait (seconds, as text), then each bucket's level after it}.
_CHARGE = """
local now = tonumber(ARGV[1])
local points = tonumber(ARGV[2])
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[1 + 2 * i])
  local rate = tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1])
  local at = tonumber(state[2])
  if level == nil or at == nil then
    level = capacity
  else
    level = math.min(capacity, level + math.max(0, now - at) * rate)
  end
  levels[i] = level
  if level < points then
    wait = math.max(wait, (points - level) / rate)
  end
end
local answer = {0, tostring(wait)}
if wait == 0 then
  answer[1] = 1
  for i, key in ipairs(KEYS) do
    local capacity = tonumber(ARGV[1 + 2 * i])
    local rate = tonumber(ARGV[2 + 2 * i])
    levels[i] = levels[i] - points
    redis.call('HSET', key, 'level', tostring(levels[i]), 'at', tostring(now))
    redis.call('EXPIRE', key, math.ceil((capacity - levels[i]) / rate) + 1)
  end
end
for i = 1, #levels do
  answer[2 + i] = tostring(levels[i])
end
return answer
"""


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A bucket's size in points and how many points a second flow back into it."""

    capacity: int
    restore_rate: float


def parse_bucket(variable: str, value: str) -> BucketSpec:
    """Parse `CAPACITY:RESTORE/UNIT` (`20000:200/second`), naming the variable on error."""
    match = _SPEC.match(value)
    if match is None:
        raise ConfigError(
            f"{variable}: `{value}` is not a cost budget; use CAPACITY:RESTORE/UNIT, "
            "for example `20000:200/second` (unit: second, minute or hour)"
        )
    capacity = int(match.group(1))
    rate = float(match.group(2)) / _UNITS[match.group(3)]
    if capacity < 1 or rate <= 0:
        raise ConfigError(f"{variable}: `{value}` must hold and restore at least one point")
    return BucketSpec(capacity=capacity, restore_rate=rate)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket to charge: its key (any text) and its spec."""

    key: str
    spec: BucketSpec


@dataclass(frozen=True, slots=True)
class BucketLevel:
    """A bucket's points after a charge (before it, when the charge was refused)."""

    spec: BucketSpec
    remaining: float


@dataclass(frozen=True, slots=True)
class Charge:
    """The outcome of one charge."""

    allowed: bool
    levels: tuple[BucketLevel, ...]  # empty when the store was unavailable
    retry_after: int = 0  # whole seconds until every bucket holds enough

    @property
    def tightest(self) -> BucketLevel | None:
        """The bucket with the fewest points left, or None when unknown."""
        return min(self.levels, key=lambda level: level.remaining, default=None)


class LeakyBuckets:
    """Charges points to leaky buckets, in Redis when `redis_url` is given, else in memory.

    `clock` (seconds, wall time) is the time the buckets refill by; every process sharing
    Redis uses its own, so their clocks should agree to within a fraction of a second.
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        key_prefix: str = "weflux:cost",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = key_prefix
        self._clock = clock
        self._redis: Redis | None = None
        self._storage_errors: tuple[type[Exception], ...] = (OSError,)  # covers TimeoutError
        if redis_url is not None:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(
                redis_url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                socket_timeout=None,  # redis-py's default is 5 s
            )  # no socket timeout: each charge is bounded by `DECISION_TIMEOUT` (no task)
            self._storage_errors = redis_errors()
        self._script = self._redis.register_script(_CHARGE) if self._redis is not None else None
        self._memory: dict[str, tuple[float, float, float]] = {}  # level, at, full at
        self._warn_storage_failure = StorageWarning(
            log, "cost budget storage unavailable; allowing operations without a budget"
        )

    async def charge(self, buckets: Sequence[Bucket], points: int) -> Charge:
        """Take `points` from every bucket, or from none of them."""
        now = self._clock()
        if self._script is None:
            return self._charge_memory(buckets, points, now)
        keys = [self._key(bucket.key) for bucket in buckets]
        args: list[float | int | str] = [repr(now), points]
        for bucket in buckets:
            args += [bucket.spec.capacity, repr(bucket.spec.restore_rate)]
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                answer = await self._script(keys=keys, args=args)
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return Charge(allowed=True, levels=())
        levels = tuple(
            BucketLevel(spec=bucket.spec, remaining=float(level))
            for bucket, level in zip(buckets, answer[2:], strict=True)
        )
        return _charge(bool(int(answer[0])), float(answer[1]), levels)

    def _charge_memory(self, buckets: Sequence[Bucket], points: int, now: float) -> Charge:
        levels = []
        wait = 0.0
        for bucket in buckets:
            spec = bucket.spec
            level, at, _ = self._memory.get(bucket.key, (float(spec.capacity), now, now))
            level = min(spec.capacity, level + max(0.0, now - at) * spec.restore_rate)
            levels.append(level)
            if level < points:
                wait = max(wait, (points - level) / spec.restore_rate)
        if wait == 0:
            levels = [level - points for level in levels]
            for bucket, level in zip(buckets, levels, strict=True):
                spec = bucket.spec
                full_at = now + (spec.capacity - level) / spec.restore_rate
                self._memory[bucket.key] = (level, now, full_at)
            if len(self._memory) > MEMORY_BUCKETS:
                self._forget_full(now)
        return _charge(
            wait == 0,
            wait,
            tuple(
                BucketLevel(spec=bucket.spec, remaining=level)
                for bucket, level in zip(buckets, levels, strict=True)
            ),
        )

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a missing bucket is a full one."""
        for key, (_, _, full_at) in list(self._memory.items()):
            if full_at <= now:
                del self._memory[key]

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{plain_key(key)}"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def _charge(allowed: bool, wait: float, levels: tuple[BucketLevel, ...]) -> Charge:
    if allowed:
        return Charge(allowed=True, levels=levels)
    return Charge(allowed=False, levels=levels, retry_after=max(1, math.ceil(wait)))
