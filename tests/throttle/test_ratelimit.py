"""Rate limits: per key and per name, several windows, emails hashed, 429s, failing open."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fixtures.limiter import LimiterFactory, build_settings
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.tasks import tasks_created
from tests.fixtures.tcp_proxy import TcpProxy
from weflux.client_ip import client_ip
from weflux.config import ConfigError
from weflux.throttle.ratelimit import (
    DECISION_TIMEOUT,
    LIMIT_NAMES,
    NO_CLIENT_ADDRESS,
    RateLimitDecision,
    RateLimiter,
    graphql_rate_limited_response,
    per_ip,
    rate_limited_response,
    storage_key,
)

UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


async def hit_times(limiter: RateLimiter, name: str, key: str, times: int) -> list[bool]:
    return [(await limiter.hit(name, key)).allowed for _ in range(times)]


async def test_exhausting_one_workspace_leaves_another_untouched(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(rate_limit_graphql_workspace="3/hour")
    assert await hit_times(limiter, "graphql_workspace", "ws-a", 3) == [True, True, True]

    denied = await limiter.hit("graphql_workspace", "ws-a")
    assert denied.allowed is False
    assert 1 <= denied.retry_after <= 3600

    assert await limiter.hit("graphql_workspace", "ws-b") == RateLimitDecision(allowed=True)
    assert (await limiter.hit("graphql_workspace", "ws-a")).allowed is False


async def test_exhausting_one_ip_leaves_another_untouched(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(rate_limit_login_ip="2/hour")
    assert await hit_times(limiter, "login_ip", "203.0.113.9", 3) == [True, True, False]
    assert (await limiter.hit("login_ip", "2001:db8::1")).allowed is True
    assert (await limiter.hit("login_ip", "203.0.113.10")).allowed is True


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        (None, NO_CLIENT_ADDRESS),
    ],
)
def test_a_per_ip_limit_counts_an_ipv6_client_by_its_64(ip: str | None, key: str) -> None:
    assert per_ip(ip) == key


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        # 6to4: the site behind 203.0.113.7 holds 2002:cb00:7107::/48, 2^16 /64s.
        ("2002:cb00:7107:1::1", "203.0.113.7"),
        ("2002:cb00:7107:ffff::1", "203.0.113.7"),
        # Teredo: every client of one Teredo server shares the /64; each is its own IPv4.
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd3", "192.0.2.44"),
        # NAT64's well-known prefix: every IPv4 client behind the translator shares the /64.
        ("64:ff9b::cb00:7107", "203.0.113.7"),
        ("64:ff9b::cb00:7108", "203.0.113.8"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_an_ipv6_address_embedding_an_ipv4_client_counts_as_that_ipv4(ip: str, key: str) -> None:
    """Given a 6to4, Teredo or NAT64 address, when keyed, then it is its IPv4 client's key:
    not a /48's 65,536 keys, nor one key shared by a translator's every client."""
    assert per_ip(ip) == key


async def test_limit_names_are_separate_namespaces(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(rate_limit_graphql_ip="1/hour", rate_limit_login_ip="1/hour")
    assert await hit_times(limiter, "graphql_ip", "203.0.113.9", 2) == [True, False]
    assert (await limiter.hit("login_ip", "203.0.113.9")).allowed is True
    assert (await limiter.hit("refresh_ip", "203.0.113.9")).allowed is True


async def test_every_window_of_a_multi_window_limit_counts(
    make_limiter: LimiterFactory,
) -> None:
    # An hour and a day, not a minute and an hour: the sliding window forgives a share of
    # the previous window's hits once a new one starts, which a slow run could straddle.
    limiter = make_limiter(rate_limit_login_ip="3/hour;5/day")
    assert len(limiter.limits["login_ip"]) == 2

    assert await hit_times(limiter, "login_ip", "ip-1", 4) == [True, True, True, False]
    # The requests denied by the shorter window did not use up the longer one.
    await hit_times(limiter, "login_ip", "ip-1", 3)
    short, long = await limiter.stats("login_ip", "ip-1")
    assert short.remaining == 0
    assert long.remaining == 2

    # The longer window denies on its own once it is used up.
    limiter = make_limiter(rate_limit_login_ip="10/hour;2/day")
    assert await hit_times(limiter, "login_ip", "ip-2", 3) == [True, True, False]
    denied = await limiter.hit("login_ip", "ip-2")
    assert denied.allowed is False
    assert denied.retry_after >= 1
    short, long = await limiter.stats("login_ip", "ip-2")
    assert short.remaining == 8


async def test_check_consumes_nothing_and_denies_once_failures_are_spent(
    make_limiter: LimiterFactory,
) -> None:
    """Given a brute-force limit of 2 an hour (test before, hit on failure only),
    when the key is checked many times, then nothing is consumed; once two failures are
    counted, a check is denied with a Retry-After, and another key is still allowed."""
    limiter = make_limiter(rate_limit_webhook_verify_ip="2/hour;10/day")
    for _ in range(5):
        assert await limiter.test("webhook_verify_ip", "203.0.113.9") == RateLimitDecision(True)
    short, long = await limiter.stats("webhook_verify_ip", "203.0.113.9")
    assert (short.remaining, long.remaining) == (2, 10)

    await hit_times(limiter, "webhook_verify_ip", "203.0.113.9", 2)
    denied = await limiter.test("webhook_verify_ip", "203.0.113.9")
    assert denied.allowed is False
    assert 1 <= denied.retry_after <= 3600
    assert (await limiter.test("webhook_verify_ip", "203.0.113.10")).allowed is True


async def test_account_keys_are_normalised_and_hashed(
    make_limiter: LimiterFactory, backend: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    limiter = make_limiter(rate_limit_login_account="2/hour")
    assert (await limiter.hit("login_account", "alice@example.com")).allowed is True
    assert (await limiter.hit("login_account", "  Alice@EXAMPLE.com\n")).allowed is True
    assert (await limiter.hit("login_account", "ALICE@example.COM")).allowed is False
    assert (await limiter.hit("login_account", "bob@example.com")).allowed is True

    digest = hashlib.sha256(b"alice@example.com").hexdigest()
    assert storage_key("login_account", " Alice@Example.com ") == "#" + digest
    if backend == "redis":
        client: Redis = request.getfixturevalue("redis_client")
        keys = [key.decode() async for key in client.scan_iter(match=f"{key_prefix}:*")]
        assert keys
        assert not [key for key in keys if "example.com" in key.lower()]
        assert [key for key in keys if digest in key]


def test_keys_that_could_break_the_key_layout_are_hashed() -> None:
    assert storage_key("graphql_workspace", "0191d7e2-ws") == "0191d7e2-ws"
    assert storage_key("login_ip", "2001:db8::1") == "2001:db8::1"
    odd = storage_key("graphql_workspace", "a/5/1/minute")
    assert odd.startswith("#")
    assert "/" not in odd
    assert storage_key("login_ip", "").startswith("#")


@pytest.mark.parametrize("name", LIMIT_NAMES)
async def test_every_named_limit_is_enforced(make_limiter: LimiterFactory, name: str) -> None:
    limiter = make_limiter(**{f"rate_limit_{name}": "1/hour"})
    assert await hit_times(limiter, name, "key", 2) == [True, False]


async def test_an_unknown_limit_name_is_an_error(tmp_path: Path) -> None:
    limiter = RateLimiter(build_settings(tmp_path))
    with pytest.raises(ValueError, match="unknown rate limit `login`"):
        await limiter.hit("login", "203.0.113.9")
    await limiter.close()


def test_default_settings_parse(tmp_path: Path) -> None:
    limiter = RateLimiter(build_settings(tmp_path))
    assert set(limiter.limits) == set(LIMIT_NAMES)
    # Failed password checks (issue 9): 10 per account and IP, 100 per account.
    assert [str(item) for item in limiter.limits["login_account_ip"]] == ["10 per 1 hour"]
    assert [str(item) for item in limiter.limits["login_account"]] == ["100 per 1 hour"]


@pytest.mark.parametrize("value", ["lots", "", "5/fortnight", "5 minutes", "0/minute"])
def test_an_invalid_limit_names_the_variable(tmp_path: Path, value: str) -> None:
    settings = build_settings(tmp_path, rate_limit_signup_ip=value)
    with pytest.raises(ConfigError, match="WEFLUX_RATE_LIMIT_SIGNUP_IP"):
        RateLimiter(settings)


def test_an_invalid_key_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        RateLimiter(build_settings(tmp_path), key_prefix="has space")


async def test_the_redis_store_uses_redis_py(tmp_path: Path) -> None:
    limiter = RateLimiter(build_settings(tmp_path, redis_url=UNREACHABLE_REDIS_URL))
    storage = limiter._storage
    assert isinstance(storage, RedisStorage)
    assert isinstance(storage.bridge, RedispyBridge)
    await limiter.close()


def test_rate_limited_response() -> None:
    response = rate_limited_response(17)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.body == (
        b'{"error":{"code":"RATE_LIMITED","message":"Too many requests; try again later"}}'
    )
    assert rate_limited_response(0).headers["Retry-After"] == "1"


def test_graphql_rate_limited_response() -> None:
    response = graphql_rate_limited_response(42)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "42"
    assert response.body == (
        b'{"errors":[{"message":"Too many requests","extensions":{"code":"RATE_LIMITED"}}]}'
    )


def limited_app(limiter: RateLimiter) -> Starlette:
    async def login(request: Request) -> Response:
        decision = await limiter.hit("login_ip", client_ip(request, ()) or "")
        if not decision.allowed:
            return rate_limited_response(decision.retry_after)
        return JSONResponse({"ok": True})

    async def graphql(request: Request) -> Response:
        decision = await limiter.hit("graphql_workspace", request.headers["x-workspace"])
        if not decision.allowed:
            return graphql_rate_limited_response(decision.retry_after)
        return JSONResponse({"data": {}})

    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/graphql", graphql, methods=["POST"]),
        ]
    )


async def test_429_over_http(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(rate_limit_login_ip="2/hour", rate_limit_graphql_workspace="1/hour")
    app = limited_app(limiter)

    def client(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 1234))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async with client("10.0.0.1") as first, client("10.0.0.2") as second:
        assert [(await first.post("/login")).status_code for _ in range(2)] == [200, 200]
        response = await first.post("/login")
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 3600
        assert response.json() == {
            "error": {"code": "RATE_LIMITED", "message": "Too many requests; try again later"}
        }
        assert (await second.post("/login")).status_code == 200

        ws_a = {"X-Workspace": "ws-a"}
        assert (await first.post("/graphql", headers=ws_a)).status_code == 200
        response = await second.post("/graphql", headers=ws_a)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert (await second.post("/graphql", headers={"X-Workspace": "ws-b"})).status_code == 200


async def test_an_unreachable_redis_fails_open_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = build_settings(
        tmp_path, redis_url=UNREACHABLE_REDIS_URL, rate_limit_login_ip="1/minute;2/hour"
    )
    limiter = RateLimiter(settings)
    with caplog.at_level(logging.WARNING, logger="weflux.throttle.ratelimit"):
        decisions = [await limiter.hit("login_ip", "203.0.113.9") for _ in range(5)]
    await limiter.close()
    assert decisions == [RateLimitDecision(allowed=True)] * 5
    warnings = [r for r in caplog.records if r.name == "weflux.throttle.ratelimit"]
    assert len(warnings) == 1
    assert "allowing requests" in warnings[0].getMessage()


@pytest.fixture
async def redis_proxy(require_redis: None) -> AsyncIterator[TcpProxy]:
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_redis_going_away_fails_open_and_limits_resume(
    tmp_path: Path,
    redis_proxy: TcpProxy,
    redis_client: Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = make_url(TEST_REDIS_URL).database or "0"
    settings = build_settings(
        tmp_path,
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/{database}",
        rate_limit_login_account="2/hour",
    )
    limiter = RateLimiter(settings, key_prefix=key_prefix)
    try:
        assert await hit_times(limiter, "login_account", "a@example.com", 3) == [
            True,
            True,
            False,
        ]
        await redis_proxy.cut()
        with caplog.at_level(logging.WARNING, logger="weflux.throttle.ratelimit"):
            assert await hit_times(limiter, "login_account", "a@example.com", 3) == [True] * 3
        assert len([r for r in caplog.records if r.name == "weflux.throttle.ratelimit"]) == 1

        await redis_proxy.restore()
        # The counters survived in Redis: the account is still over its limit.
        denied = await limiter.hit("login_account", "a@example.com")
        assert denied.allowed is False
        assert denied.retry_after >= 1
    finally:
        await limiter.close()


async def test_a_decision_creates_no_task(make_limiter: LimiterFactory) -> None:
    """Given a limiter whose store is open, when requests are counted, tested and read,
    then each Redis command runs in the request's own task: with a socket timeout redis-py
    bounds each write with `asyncio.wait_for`, which on Python 3.11 runs it in a task of
    its own, several times per GraphQL request (issue 11). The limiter bounds each
    decision itself (`DECISION_TIMEOUT`)."""
    limiter = make_limiter(rate_limit_graphql_workspace="100/minute;1000/hour")
    await limiter.hit("graphql_workspace", "ws-tasks")  # the store's connection is open
    with tasks_created() as created:
        assert (await limiter.hit("graphql_workspace", "ws-tasks")).allowed is True
        assert (await limiter.test("graphql_workspace", "ws-tasks")).allowed is True
        assert await limiter.used("graphql_workspace", "ws-tasks") == 2
        assert await limiter.tally("probe", "ws-tasks", seconds=60) == 1
    assert created == []


async def test_a_redis_that_never_answers_fails_open_within_the_decision_bound(
    tmp_path: Path, redis_proxy: TcpProxy, redis_client: Redis, key_prefix: str
) -> None:
    """Given a limiter on a Redis that takes requests and never answers (no socket timeout
    on its client), when a request is counted, then it is allowed after `DECISION_TIMEOUT`
    (not held for ever), and once Redis answers again the counters are read right."""
    database = make_url(TEST_REDIS_URL).database or "0"
    settings = build_settings(
        tmp_path,
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/{database}",
        rate_limit_login_ip="2/hour",
    )
    limiter = RateLimiter(settings, key_prefix=key_prefix)
    try:
        assert await hit_times(limiter, "login_ip", "203.0.113.7", 3) == [True, True, False]
        await redis_proxy.deafen()
        loop = asyncio.get_running_loop()
        for call in (limiter.hit, limiter.test):
            started = loop.time()
            assert (await call("login_ip", "203.0.113.7")).allowed is True
            assert DECISION_TIMEOUT - 0.1 <= loop.time() - started <= DECISION_TIMEOUT + 0.5
        await redis_proxy.restore()
        denied = await limiter.hit("login_ip", "203.0.113.7")
        assert denied.allowed is False
        assert denied.retry_after >= 1
        assert await limiter.used("login_ip", "203.0.113.7") == 2
    finally:
        await limiter.close()


async def test_retry_after_never_exceeds_the_window_after_a_slow_round_trip(
    make_limiter: LimiterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a per-hour limit just used up, when the store answers the window's state
    slowly (the library reads its clock once the answer is in), then Retry-After is
    still at most the 3600 s of the window (it was one more on Redis: our clock was read
    first; a per-minute limit answered 61)."""
    limiter = make_limiter(rate_limit_graphql_workspace="1/hour")
    assert (await limiter.hit("graphql_workspace", "ws-slow")).allowed is True
    storage = limiter._storage
    read_window = storage.get_sliding_window  # type: ignore[attr-defined]

    async def slow_read(key: str, expiry: int) -> tuple[int, float, int, float]:
        await asyncio.sleep(0.01)  # the window is no longer exactly at its start
        window: tuple[int, float, int, float] = await read_window(key, expiry)
        await asyncio.sleep(0.3)  # the answer travels back slowly
        return window

    monkeypatch.setattr(storage, "get_sliding_window", slow_read)

    denied = await limiter.hit("graphql_workspace", "ws-slow")

    assert denied.allowed is False
    assert 1 <= denied.retry_after <= 3600
