"""The channel cache's remembered misses: bounded in number and in time, evicted by changes.

A keyed webhook URL that names no channel is remembered as a miss
(weflux.services.channel_cache), so that posts to it read the database once per key and
`MISS_TTL_SECONDS`; an attacker's random keys must cost a bounded memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from weflux.realtime.broker import InProcessBroker
from weflux.services.channel_cache import MAX_ENTRIES, ChannelCache


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader that counts its calls per key and answers what `known` holds (else None)."""

    def __init__(self) -> None:
        self.calls: dict[Any, int] = {}
        self.known: dict[Any, Any] = {}

    def of(self, key: Any) -> Any:
        async def load() -> Any:
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.known.get(key)

        return load


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(clock: Clock) -> AsyncIterator[ChannelCache]:
    broker = InProcessBroker()
    cache = ChannelCache(broker, miss_ttl=30.0, max_misses=3, clock=clock)
    await cache.start()
    yield cache
    await cache.stop()


async def ask(cache: ChannelCache, loads: Loads, key: Any) -> Any:
    return await cache.get_or_load(key, loads.of(key), remember_miss=True)


async def test_a_miss_is_remembered_until_it_expires(cache: ChannelCache, clock: Clock) -> None:
    """Given a key that names nothing,
    when it is asked for again within the miss's lifetime, and once after it,
    then it is loaded once, then once more."""
    loads = Loads()
    assert await ask(cache, loads, "unknown") is None
    clock.now += 29.9
    assert await ask(cache, loads, "unknown") is None
    assert loads.calls["unknown"] == 1
    clock.now += 0.1
    assert await ask(cache, loads, "unknown") is None
    assert loads.calls["unknown"] == 2


async def test_misses_are_only_remembered_when_asked(cache: ChannelCache) -> None:
    """Given a load that answers None without `remember_miss` (a route, a secret),
    when it is asked for again,
    then it is loaded again: only the keyed URL's caller opts in."""
    loads = Loads()
    assert await cache.get_or_load("other", loads.of("other")) is None
    assert await cache.get_or_load("other", loads.of("other")) is None
    assert loads.calls["other"] == 2
    assert cache.misses == 0


async def test_misses_are_bounded_least_recently_used_first(cache: ChannelCache) -> None:
    """Given a cache that remembers 3 misses and a live channel it has cached,
    when 5 unknown keys are asked for, the first asked again before the others,
    then 3 are remembered: the first and the last two; the channel is still served."""
    loads = Loads()
    loads.known["live"] = "channel"
    assert await ask(cache, loads, "live") == "channel"
    for key in ("k0", "k1", "k2"):
        await ask(cache, loads, key)
    await ask(cache, loads, "k0")  # used again: now the most recent
    for key in ("k3", "k4"):
        await ask(cache, loads, key)
    assert cache.misses == 3
    for key in ("k0", "k3", "k4", "live"):
        await ask(cache, loads, key)
    assert loads.calls == {"live": 1, "k0": 1, "k1": 1, "k2": 1, "k3": 1, "k4": 1}
    await ask(cache, loads, "k1")
    assert loads.calls["k1"] == 2


async def test_random_keys_by_the_thousand_never_push_out_a_live_channel(clock: Clock) -> None:
    """Given the default bounds and a cached live channel,
    when more distinct unknown keys are asked for than the cache holds answers,
    then the misses stay within their bound and the channel is still served from memory."""
    cache = ChannelCache(InProcessBroker(), clock=clock)
    await cache.start()
    try:
        loads = Loads()
        loads.known["live"] = "channel"
        await ask(cache, loads, "live")
        for number in range(MAX_ENTRIES + 1):
            await ask(cache, loads, f"random-{number}")
        assert cache.misses == cache.max_misses
        assert await ask(cache, loads, "live") == "channel"
        assert loads.calls["live"] == 1
    finally:
        await cache.stop()


async def test_a_change_forgets_every_miss(cache: ChannelCache) -> None:
    """Given a remembered miss,
    when any number changes (announced through the broker),
    then the key is loaded again: a channel connected with it is served at once."""
    loads = Loads()
    await ask(cache, loads, "new-key")
    loads.known["new-key"] = "channel"
    await cache.changed()
    assert await ask(cache, loads, "new-key") == "channel"
    assert loads.calls["new-key"] == 2


async def test_a_miss_loaded_across_a_change_is_not_remembered(cache: ChannelCache) -> None:
    """Given a load that answers None while a change happens (it may be stale already),
    when the key is asked for again,
    then it is loaded again."""
    calls = 0

    async def load() -> None:
        nonlocal calls
        calls += 1
        cache.clear()  # a commit elsewhere, heard while the load ran

    assert await cache.get_or_load("racing", load, remember_miss=True) is None
    assert await cache.get_or_load("racing", load, remember_miss=True) is None
    assert calls == 2
