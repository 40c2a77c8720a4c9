"""Rate limits per client IP, account and workspace, kept in Redis (or memory without it)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from starlette.responses import JSONResponse, Response

from weflux.config import ConfigError, Settings
from weflux.errors import ErrorCode, error_response
from weflux.redis_errors import redis_errors

log = logging.getLogger(__name__)

# A per-IP limit counts an IPv6 client by its network of this prefix: a home or an office
# is given a /64 (or more), so one client has that many addresses to choose from.
IPV6_PREFIX = 64
# NAT64's well-known prefix (RFC 6052): behind a translator (SIIT) every IPv4 client
# arrives as 64:ff9b::<its IPv4>, so the /64 would be the whole IPv4 Internet's.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

LIMIT_NAMES = (
    "login_ip",
    "login_account",
    "login_account_ip",
    "signup_ip",
    "signup_email",
    "signup_confirm_ip",
    "invitation_ip",
    "refresh_ip",
    "switch_ip",
    "invitation_resend",
    "invitation_workspace",
    "invitation_email",
    "media_upload_mb_workspace",
    "graphql_ip",
    "graphql_workspace",
    "websocket_ip",
    "webhook_verify_ip",
    "webhook_verify_key",
    "webhook_signature_ip",
    "webhook_signature_key",
    "template_sends_workspace",
    "template_sends_member",
)
# Limits keyed by an account identifier (an email, alone or with an IP): normalised and
# hashed before storage, so no email address is ever a key in Redis.
ACCOUNT_LIMITS = frozenset(
    {"login_account", "login_account_ip", "signup_email", "invitation_email"}
)

# The connect timeout of the limiter's Redis client, and the bound on one whole decision:
# a Redis that hangs costs a request at most this long before the limiter fails open. The
# client has no socket timeout: with one redis-py bounds each write with
# `asyncio.wait_for`, which before Python 3.12 runs it in a task of its own (a task and a
# turn of the event loop per command, several per GraphQL request; issue 11). The bound
# is the socket timeout the client had, the most a Redis that never answers cost a
# decision then (its first command timed out, and was not retried).
REDIS_CONNECT_TIMEOUT = 0.5
DECISION_TIMEOUT = 0.5
STORAGE_WARNING_INTERVAL = 60.0
# The key of the per-IP limits for a request whose client address is unknown (no socket
# peer: an ASGI server on a Unix socket, unless `WEFLUX_TRUSTED_PROXIES` trusts it): such
# requests share one counter per limit; they never escape the limit.
NO_CLIENT_ADDRESS = "-"
_PREFIX = re.compile(r"^[A-Za-z0-9:._-]{1,64}$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9:._-]{1,128}$")


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """Whether a request may proceed and, when not, the whole seconds to wait."""

    allowed: bool
    retry_after: int = 0


ALLOWED = RateLimitDecision(allowed=True)


def _variable(name: str) -> str:
    return f"WEFLUX_RATE_LIMIT_{name.upper()}"


def parse_limit(name: str, value: str) -> tuple[RateLimitItem, ...]:
    """Parse one `rate_limit_<name>` setting ("5/minute;30/hour"), naming the variable on error."""
    try:
        items = tuple(parse_many(value))
    except ValueError:
        items = ()
    if not items:
        raise ConfigError(
            f"{_variable(name)}: `{value}` is not a rate limit; "
            "use the form `10/minute` or `5/minute;30/hour`"
        )
    for item in items:
        if item.amount < 1:
            raise ConfigError(f"{_variable(name)}: `{value}` must allow at least one request")
    return items


def per_ip(ip: str | None) -> str:
    """The key of a per-IP limit: an IPv4 client address as it is, an IPv6 one as its /64
    network (`IPV6_PREFIX`), or the counter shared by requests without one
    (`NO_CLIENT_ADDRESS`; a warning says so once per process)."""
    if ip is not None:
        return _network_of(ip)
    _warn_no_client_address()
    return NO_CLIENT_ADDRESS


def _network_of(ip: str) -> str:
    """`ip`'s network for the per-IP limits: one subscriber's /64 for IPv6, whose 2**64
    addresses are all theirs to send from (an address per attempt would pass every limit).

    An IPv6 address that carries its client's IPv4 address counts as that IPv4 client:
    IPv4-mapped, 6to4 (a 2002::/16 site holds a /48 of 2**16 /64s), Teredo (a /64 is a Teredo
    server's, shared by all its clients) and NAT64's well-known prefix (one /64 for every
    IPv4 client behind the translator)."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip
    embedded = _embedded_client(address)
    if embedded is not None:
        return str(embedded)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


def _embedded_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 client an IPv6 source address stands for (6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:  # `weflux.client_ip` maps these already
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # (server, client): the client's obfuscated address
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.cache
def _warn_no_client_address() -> None:
    log.warning(
        "a request without a client address: the per-IP limits count all such requests "
        "together; behind a proxy on a Unix socket, set WEFLUX_TRUSTED_PROXIES=unix"
    )


def storage_key(name: str, key: str) -> str:
    """The stored identifier of `key` under limit `name`: account keys are hashed."""
    if name in ACCOUNT_LIMITS:
        return "#" + hashlib.sha256(key.strip().casefold().encode()).hexdigest()
    return plain_key(key)


def plain_key(key: str) -> str:
    """`key` as it is when it is plain, else its hash, for a key in a store.

    Anything that might break a `/`- or `:`-separated key layout is hashed; `#` never
    appears in a plain key, so a hashed key cannot collide with one.
    """
    if _PLAIN_KEY.match(key):
        return key
    return "#" + hashlib.sha256(key.encode()).hexdigest()


class StorageWarning:
    """Says that a limit store failed and the limits fail open, at most once a minute."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self._logger = logger
        self._message = message
        self._last: float | None = None

    def __call__(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < STORAGE_WARNING_INTERVAL:
            return
        self._last = now
        self._logger.warning(self._message, extra={"error": type(exc).__name__, "detail": str(exc)})


def _seconds_until(reset_time: float, item: RateLimitItem) -> float:
    """Seconds from now to a window's reset, at most the window's length.

    The library stamps `reset_time` with its clock read after the store answered; our
    clock is read after that, never before, or a slow round trip would push the wait
    past the window (61 s for a per-minute limit). A slot always frees within one window.
    """
    return min(float(item.get_expiry()), max(0.0, reset_time - time.time()))


class RateLimiter:
    """Named rate limits over the `limits` library's sliding window counter.

    With `WEFLUX_REDIS_URL` the counters live in Redis (through redis-py) and are shared
    by every process; without it they live in this process's memory.

    When Redis fails (down, unreachable, timing out), `hit` fails open: the request is
    allowed and a warning is logged at most once a minute. This is a deliberate trade-off
    of strict limiting for availability: users can still sign in while the limiter's store
    is down, and the window in which limits are not enforced is the Redis outage, which
    the readiness probe and the warnings make visible.
    """

    def __init__(self, settings: Settings, *, key_prefix: str = "weflux") -> None:
        if not _PREFIX.match(key_prefix):
            raise ValueError(f"key_prefix `{key_prefix}` must be 1-64 of [A-Za-z0-9:._-]")
        self._limits: Mapping[str, tuple[RateLimitItem, ...]] = MappingProxyType(
            {
                name: parse_limit(name, getattr(settings, f"rate_limit_{name}"))
                for name in LIMIT_NAMES
            }
        )
        self._storage: Storage = self._create_storage(settings.redis_url, key_prefix)
        # OSError covers TimeoutError, raised by the `DECISION_TIMEOUT` bound.
        self._storage_errors: tuple[type[Exception], ...] = (StorageError, OSError)
        if settings.redis_url is not None:  # redis-py is imported only with a Redis URL
            self._storage_errors = (StorageError, *redis_errors())
        # The sliding window counter keeps two counters per key and window (constant
        # space, one atomic Lua script per check in Redis), where the moving window keeps
        # one entry per request (3000 entries for `3000/minute`); its weighted estimate
        # smooths the burst at window edges that a fixed window allows.
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._warn_storage_failure = StorageWarning(
            log, "rate limiter storage unavailable; allowing requests without limits"
        )

    @staticmethod
    def _create_storage(redis_url: str | None, key_prefix: str) -> Storage:
        if redis_url is None:
            return MemoryStorage()
        uri = redis_url
        if uri.startswith("unix://"):
            uri = "redis+unix://" + uri.removeprefix("unix://")
        return RedisStorage(
            "async+" + uri,
            implementation="redispy",
            key_prefix=key_prefix,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            # No timeout: redis-py's default is 5 s; the `limits` stub types no None.
            socket_timeout=None,  # type: ignore[arg-type]
        )

    @property
    def limits(self) -> Mapping[str, tuple[RateLimitItem, ...]]:
        """The parsed windows of every named limit."""
        return self._limits

    async def hit(self, name: str, key: str, cost: int = 1) -> RateLimitDecision:
        """Count one request (or `cost` units) against every window of limit `name` for `key`."""
        items = self._items(name)
        identifier = storage_key(name, key)
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return await self._decide(items, name, identifier, cost)
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return ALLOWED

    async def test(self, name: str, key: str) -> RateLimitDecision:
        """Whether `key` has a request left under every window of `name`, consuming nothing.

        With `hit` on failure only, this makes a brute-force limiter: test before the
        secret is compared, count the attempt when it was wrong. Fails open like `hit`.
        """
        items = self._items(name)
        identifier = storage_key(name, key)
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                for item in items:
                    if not await self._strategy.test(item, name, identifier):
                        return await self._denied(items, name, identifier)
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
        return ALLOWED

    async def used(self, name: str, key: str) -> int:
        """How many requests `key` has counted in the fullest window of limit `name`."""
        items = self._items(name)
        identifier = storage_key(name, key)
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return max(
                    [
                        item.amount
                        - (await self._strategy.get_window_stats(item, name, identifier)).remaining
                        for item in items
                    ]
                )
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return 0

    async def clear(self, name: str, key: str) -> None:
        """Forget what `key` has counted under limit `name`."""
        items = self._items(name)
        identifier = storage_key(name, key)
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                for item in items:
                    await self._strategy.clear(item, name, identifier)
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)

    async def remember(self, name: str, key: str, *, seconds: int) -> None:
        """Keep a hashed mark of `key` under `name` for `seconds` (`remembers` asks)."""
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                await self._storage.clear(self._mark(name, key))
                await self._storage.incr(self._mark(name, key), seconds)
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)

    async def remembers(self, name: str, key: str) -> bool:
        """Whether a mark of `key` under `name` is kept (False while the store is down)."""
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return await self._storage.get(self._mark(name, key)) > 0
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return False

    async def tally(self, name: str, key: str, *, seconds: int) -> int:
        """Add one to a hashed counter of `key` under `name` that restarts every `seconds`
        (a fixed window from its first count); the new total, or 0 while the store is down.

        The security detectors count with it: a detector fires when its total reaches the
        threshold, exactly once per window, in every process sharing the store."""
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return int(await self._storage.incr(self._tally(name, key), seconds))
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return 0

    async def tallied(self, name: str, key: str) -> int:
        """The current total of a `tally` counter, counting nothing (0 while the store is down)."""
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return int(await self._storage.get(self._tally(name, key)))
        except self._storage_errors as exc:
            self._warn_storage_failure(exc)
            return 0

    @staticmethod
    def _tally(name: str, key: str) -> str:
        if not _PLAIN_KEY.match(name):
            raise ValueError(f"tally name `{name}` must be 1-128 of [A-Za-z0-9:._-]")
        return f"tally/{name}/#{hashlib.sha256(key.encode()).hexdigest()}"

    @staticmethod
    def _mark(name: str, key: str) -> str:
        if not _PLAIN_KEY.match(name):
            raise ValueError(f"mark name `{name}` must be 1-128 of [A-Za-z0-9:._-]")
        return f"mark/{name}/#{hashlib.sha256(key.encode()).hexdigest()}"

    async def stats(self, name: str, key: str) -> tuple[WindowStats, ...]:
        """Each window's reset time and remaining requests for `key`, consuming nothing
        (`TimeoutError` after `DECISION_TIMEOUT`; it does not fail open)."""
        items = self._items(name)
        identifier = storage_key(name, key)
        async with asyncio.timeout(DECISION_TIMEOUT):
            return tuple(
                [await self._strategy.get_window_stats(item, name, identifier) for item in items]
            )

    def _items(self, name: str) -> tuple[RateLimitItem, ...]:
        items = self._limits.get(name)
        if items is None:
            raise ValueError(f"unknown rate limit `{name}`; known: {', '.join(LIMIT_NAMES)}")
        return items

    async def _decide(
        self, items: tuple[RateLimitItem, ...], name: str, identifier: str, cost: int = 1
    ) -> RateLimitDecision:
        # One window: the atomic hit checks and consumes at once (a denied hit consumes
        # nothing). Several windows: test them all first so a request denied by one does
        # not use up the others. Between the test and the hits a concurrent request can
        # take the last slot of a later window; then the earlier windows have counted a
        # request that is denied. That over-count is bounded by the concurrency and errs
        # on the strict side, which is preferable to a lock around every decision.
        if len(items) > 1:
            for item in items:
                if not await self._strategy.test(item, name, identifier, cost=cost):
                    return await self._denied(items, name, identifier, cost)
        for item in items:
            if not await self._strategy.hit(item, name, identifier, cost=cost):
                return await self._denied(items, name, identifier, cost)
        return ALLOWED

    async def _denied(
        self, items: tuple[RateLimitItem, ...], name: str, identifier: str, cost: int = 1
    ) -> RateLimitDecision:
        wait = 0.0
        for item in items:
            stats = await self._strategy.get_window_stats(item, name, identifier)
            if stats.remaining < cost:
                wait = max(wait, _seconds_until(stats.reset_time, item))
        return RateLimitDecision(allowed=False, retry_after=max(1, math.ceil(wait)))

    async def close(self) -> None:
        """Release the Redis connections, or stop the memory store's expiry task."""
        storage = self._storage
        if isinstance(storage, RedisStorage):
            bridge = storage.bridge
            if isinstance(bridge, RedispyBridge):
                from redis.asyncio import Redis

                client = bridge.get_connection()
                if isinstance(client, Redis):
                    await client.aclose()
        elif isinstance(storage, MemoryStorage):
            timer = storage.timer
            if timer is not None and not timer.done():
                timer.cancel()


def rate_limited_response(retry_after: int) -> Response:
    """HTTP 429 in the `{"error": {...}}` shape, with `Retry-After`."""
    return error_response(
        429,
        ErrorCode.RATE_LIMITED,
        "Too many requests; try again later",
        headers=_headers(retry_after),
    )


def graphql_rate_limited_response(retry_after: int) -> Response:
    """HTTP 429 in the GraphQL `errors` shape, with `Retry-After`."""
    return JSONResponse(
        {
            "errors": [
                {"message": "Too many requests", "extensions": {"code": ErrorCode.RATE_LIMITED}}
            ]
        },
        status_code=429,
        headers=_headers(retry_after),
    )


def _headers(retry_after: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(retry_after))), "Cache-Control": "no-store"}
