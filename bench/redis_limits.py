"""What a GraphQL request's limits cost this process when they live in Redis.

    .venv/bin/python -m bench.redis_limits [--redis-url URL] [--requests 2000] [--rounds 7]

One process, a real Redis (default `redis://127.0.0.1:6379/0`; keys under a fresh prefix,
deleted at the end). Every GraphQL operation, before it runs, makes three Redis calls
(`weflux.gql.guard`): the per-IP and per-workspace request limits (`RateLimiter.hit`, one
Lua script each at the default one-window limits) and the cost charge of both buckets
(`CostBudgets.charge`, one Lua script). Side by side, in the same run:

- weflux: those three calls, as the guard makes them;
- floor: three `PING`s on a bare redis-py client without a socket timeout, one after the
  other: three round trips through the same client library, no limit logic.

Each round runs `--requests` such "requests", 4 in flight, and reads this process's CPU
time around them (Redis's own CPU is not counted): CPU per request, median of the rounds
with their range, rounds alternating which side goes first. Ratios are of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from weflux.auth.principal import Principal
from weflux.config import generate_encryption_key_entry, load_settings
from weflux.gql.budgets import CostBudgets
from weflux.gql.guard import hit_request_limits
from weflux.models import Role, utcnow
from weflux.throttle.ratelimit import RateLimiter

IN_FLIGHT = 4
POINTS = 51  # the inbox page


async def per_request(call: Callable[[], Awaitable[object]], requests: int) -> float:
    """This process's CPU seconds per `call`, `IN_FLIGHT` of them at a time."""
    counter = itertools.count()

    async def worker() -> None:
        while next(counter) < requests:
            await call()

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - cpu) / requests


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1e6:.1f} µs "
        f"({min(values) * 1e6:.1f}-{max(values) * 1e6:.1f})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    prefix = f"weflux-bench-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        _env_file=None,
        env="test",
        var_dir=Path(tempfile.mkdtemp(prefix="weflux-bench-")) / "var",
        jwt_secret="b" * 40,
        encryption_keys=generate_encryption_key_entry("b1"),
        redis_url=args.redis_url,
        rate_limit_graphql_ip="1000000/minute",
        rate_limit_graphql_workspace="1000000/minute",
        rate_limit_graphql_cost_member="100000000:1000000/second",
        rate_limit_graphql_cost_workspace="100000000:1000000/second",
    )
    limiter = RateLimiter(settings, key_prefix=prefix)
    budgets = CostBudgets(settings)
    budgets.buckets._prefix = f"{prefix}:cost"  # keys of this run only
    principal = Principal(
        user_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        membership_id=uuid.uuid4(),
        role=Role.ADMIN,
        token_expires_at=utcnow(),
    )
    bare = Redis.from_url(args.redis_url, socket_timeout=None)

    async def weflux() -> None:
        assert (await hit_request_limits(limiter, "203.0.113.1", principal)).allowed
        assert (await budgets.charge(principal, POINTS)).allowed

    async def floor() -> None:
        for _ in range(3):
            await bare.ping()

    sides = {"weflux": weflux, "floor": floor}
    results: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for call in sides.values():  # warm-up: connections, scripts loaded
            await per_request(call, 200)
        for number in range(args.rounds):
            order = list(sides) if number % 2 == 0 else list(reversed(sides))
            for name in order:
                results[name].append(await per_request(sides[name], args.requests))
    finally:
        await limiter.close()
        await budgets.close()
        keys = [key async for key in bare.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await bare.delete(*keys)
        await bare.aclose()
    ratio = statistics.median(results["weflux"]) / statistics.median(results["floor"])
    print(
        f"Redis limits of one GraphQL request (2 request limits + 1 cost charge); "
        f"{args.rounds} rounds of {args.requests}, {IN_FLIGHT} in flight; this process's CPU"
    )
    print(
        f"  weflux {spread(results['weflux'])}   floor {spread(results['floor'])}   "
        f"ratio {ratio:.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
