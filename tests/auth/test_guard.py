"""The password guard: failed checks per account and IP, a per-account cap, no bcrypt when
throttled, unknown emails like known ones. Each test runs on the in-process store and on
Redis (the limiter of several processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from redis.asyncio import Redis

import weflux
from tests.fixtures.limiter import LimiterFactory
from weflux.auth.guard import PasswordGuard
from weflux.auth.passwords import hash_password
from weflux.errors import RateLimited

EMAIL = "owner@acme.example"
RIGHT = "violet-Granite-harbor-93"
WRONG = "guess-Attempt-0000"
ATTACKER = "198.51.100.66"
OWNER_HOME = "203.0.113.10"
OWNER_TRAVEL = "192.0.2.200"


class BcryptCount:
    """Counts the bcrypt checks that really ran."""

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counting(password: bytes, hashed: bytes) -> Any:
            self.calls += 1
            return real(password, hashed)

        return counting


@pytest.fixture
def bcrypt_count(monkeypatch: pytest.MonkeyPatch) -> BcryptCount:
    count = BcryptCount()
    monkeypatch.setattr(bcrypt, "checkpw", count.wrap(bcrypt.checkpw))
    return count


@pytest.fixture
async def stored() -> str:
    return await hash_password(RIGHT)


def guard_of(make_limiter: LimiterFactory, *, per_ip: str, per_account: str) -> PasswordGuard:
    limiter = make_limiter(rate_limit_login_account_ip=per_ip, rate_limit_login_account=per_account)
    return PasswordGuard(limiter)


async def attempt(
    guard: PasswordGuard, ip: str, password: str, stored: str | None, email: str = EMAIL
) -> bool | str:
    """True or False when the password was checked, "throttled" when it was refused."""
    try:
        return await guard.check(email=email, ip=ip, password=password, password_hash=stored)
    except RateLimited as refused:
        wait, code = refused.retry_after, refused.code
    assert 1 <= wait <= 3600
    assert code == "RATE_LIMITED"
    return "throttled"


async def test_failures_throttle_that_ip_on_that_account_and_nothing_else(
    make_limiter: LimiterFactory, stored: str, bcrypt_count: BcryptCount
) -> None:
    """Given 3 failures allowed per account and IP, when an attacker fails 3 times, then
    their next attempts are refused without bcrypt, even with the right password (in
    any case of the email), while the owner from another IP gets in."""
    guard = guard_of(make_limiter, per_ip="3/hour", per_account="100/hour")
    assert [await attempt(guard, ATTACKER, WRONG, stored) for _ in range(3)] == [False] * 3
    checked = bcrypt_count.calls

    refused = [
        await attempt(guard, ATTACKER, RIGHT, stored, email=email)
        for email in (EMAIL, EMAIL.upper(), f"  {EMAIL} ")
    ]

    assert refused == ["throttled"] * 3
    assert bcrypt_count.calls == checked
    assert await attempt(guard, OWNER_TRAVEL, RIGHT, stored) is True


async def test_successes_never_count_and_a_success_clears_the_failures_of_its_ip(
    make_limiter: LimiterFactory, stored: str
) -> None:
    """Given 3 failures allowed per account and IP, then 10 logins in a row all pass
    (today the 6th was 429), and after 2 failures a success starts the count again."""
    guard = guard_of(make_limiter, per_ip="3/hour", per_account="5/hour")
    assert [await attempt(guard, OWNER_HOME, RIGHT, stored) for _ in range(10)] == [True] * 10

    assert [await attempt(guard, OWNER_HOME, WRONG, stored) for _ in range(2)] == [False] * 2
    assert await attempt(guard, OWNER_HOME, RIGHT, stored) is True
    assert [await attempt(guard, OWNER_HOME, WRONG, stored) for _ in range(4)] == [
        False,
        False,
        False,
        "throttled",
    ]


async def test_past_the_account_cap_ips_that_failed_are_refused_but_a_fresh_ip_is_checked(
    make_limiter: LimiterFactory, stored: str, bcrypt_count: BcryptCount
) -> None:
    """Given a cap of 5 failures per account, when 5 attacker IPs fail once each (a
    distributed attack), then each of them is refused from now on, without bcrypt,
    while an IP that has not failed still gets its check: a new attacker IP gets one
    wrong guess, and the owner on a fresh network gets in with the right password."""
    guard = guard_of(make_limiter, per_ip="3/hour", per_account="5/hour")
    botnet = [f"198.51.100.{n}" for n in range(1, 6)]
    assert [await attempt(guard, ip, WRONG, stored) for ip in botnet] == [False] * 5
    checked = bcrypt_count.calls

    assert [await attempt(guard, ip, WRONG, stored) for ip in botnet] == ["throttled"] * 5
    assert await attempt(guard, botnet[0], RIGHT, stored) == "throttled"
    assert bcrypt_count.calls == checked

    assert await attempt(guard, "198.51.100.99", WRONG, stored) is False
    assert await attempt(guard, "198.51.100.99", WRONG, stored) == "throttled"
    assert await attempt(guard, OWNER_TRAVEL, RIGHT, stored) is True


async def test_past_the_account_cap_the_owner_may_still_mistype_on_a_known_network(
    make_limiter: LimiterFactory, stored: str
) -> None:
    """Given the owner logged in from home before, when a distributed attack crosses the
    cap, then at home the owner may mistype and still get in (a known IP answers to its
    own limit only), where an unknown IP that failed once is refused."""
    guard = guard_of(make_limiter, per_ip="3/hour", per_account="5/hour")
    assert await attempt(guard, OWNER_HOME, RIGHT, stored) is True
    for n in range(1, 6):
        assert await attempt(guard, f"198.51.100.{n}", WRONG, stored) is False

    assert await attempt(guard, OWNER_HOME, WRONG, stored) is False
    assert await attempt(guard, OWNER_HOME, RIGHT, stored) is True
    assert await attempt(guard, OWNER_TRAVEL, WRONG, stored) is False
    assert await attempt(guard, OWNER_TRAVEL, RIGHT, stored) == "throttled"


async def test_an_unknown_email_is_counted_and_refused_exactly_like_a_known_one(
    make_limiter: LimiterFactory, stored: str, bcrypt_count: BcryptCount
) -> None:
    """Given no account for nobody@acme.example, then its checks cost one bcrypt each,
    are counted the same, and are refused with the same error as a known account's."""
    guard = guard_of(make_limiter, per_ip="2/hour", per_account="100/hour")
    unknown = "nobody@acme.example"

    outcomes = [await attempt(guard, ATTACKER, WRONG, None, email=unknown) for _ in range(3)]
    known = [await attempt(guard, ATTACKER, WRONG, stored) for _ in range(3)]

    assert outcomes == known == [False, False, "throttled"]
    assert bcrypt_count.calls == 4
    with pytest.raises(RateLimited) as on_unknown:
        await guard.check(email=unknown, ip=ATTACKER, password=WRONG, password_hash=None)
    with pytest.raises(RateLimited) as on_known:
        await guard.check(email=EMAIL, ip=ATTACKER, password=WRONG, password_hash=stored)
    assert on_unknown.value.message == on_known.value.message
    assert on_unknown.value.code == on_known.value.code


async def test_concurrent_guesses_are_counted_before_bcrypt_runs(
    make_limiter: LimiterFactory, stored: str, bcrypt_count: BcryptCount
) -> None:
    """Given 5 failures allowed per account and IP, when 20 guesses arrive at once, then
    exactly 5 run bcrypt and 15 are refused: nobody slips past the count while the
    first guesses are still being hashed."""
    guard = guard_of(make_limiter, per_ip="5/hour", per_account="100/hour")

    outcomes = await asyncio.gather(*(attempt(guard, ATTACKER, WRONG, stored) for _ in range(20)))

    assert sorted(map(str, outcomes)) == ["False"] * 5 + ["throttled"] * 15
    assert bcrypt_count.calls == 5


async def test_no_email_address_is_a_key_in_the_store(
    make_limiter: LimiterFactory,
    stored: str,
    backend: str,
    key_prefix: str,
    request: pytest.FixtureRequest,
) -> None:
    """The counters and the known-IP marks are keyed by hashes only."""
    guard = guard_of(make_limiter, per_ip="3/hour", per_account="5/hour")
    assert await attempt(guard, OWNER_HOME, RIGHT, stored) is True
    assert await attempt(guard, ATTACKER, WRONG, stored) is False
    if backend != "redis":
        return
    client: Redis = request.getfixturevalue("redis_client")
    keys = [key.decode() async for key in client.scan_iter(match=f"{key_prefix}:*")]
    assert keys
    assert not [key for key in keys if "acme" in key or ATTACKER in key or OWNER_HOME in key]


def test_every_password_check_goes_through_the_guard() -> None:
    """No module but the guard calls `verify_password`: a new place that checks a
    password (a re-authentication, disabling two factors) cannot forget the limits."""
    package = Path(weflux.__file__).parent
    allowed = {package / "auth" / "passwords.py", package / "auth" / "guard.py"}
    callers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path not in allowed and "verify_password" in path.read_text()
    ]
    assert callers == []
