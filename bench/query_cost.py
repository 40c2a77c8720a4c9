"""What the query cost guard adds to a request: the inbox page, counted and charged.

    .venv/bin/python -m bench.query_cost [--requests 300] [--database-url URL] [--redis-url URL]

One run, one process, the app in process (httpx's ASGI transport, no sockets), on a fresh
migrated database (SQLite unless `--database-url`) holding 50 conversations, each with a
contact, an assignee and a last message. It measures, side by side:

- the whole request: `POST /graphql` of the inbox page (`conversations(first: 50)` with
  contact, assignee and last message), authenticated, executed, committed, serialised;
- its floor: `{ __typename }` through the same path (authentication, parsing,
  validation, the guard, the response) with no resolver and no database;
- graphql-core's validation of the inbox document alone, the work every request already
  pays and the guard's natural yardstick;
- the cost calculation alone (`weflux.gql.cost.operation_cost` on the parsed document),
  and the budget charge alone (memory, and Redis with `--redis-url`).

Each in-process figure is the median of 7 rounds of many calls; the requests' is the median
of `--requests` requests after a warm-up. Ratios are of medians within this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from graphql import parse, validate

from tests.fixtures.api import login
from tests.fixtures.factories import (
    create_actor,
    create_conversation,
    create_message,
    create_org,
    create_whatsapp_account,
)
from weflux.app import create_app
from weflux.auth import passwords
from weflux.auth.principal import Principal
from weflux.config import generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.gql.budgets import CostBudgets
from weflux.gql.cost import operation_cost
from weflux.gql.schema import schema
from weflux.migrate import migrate
from weflux.models import MessageDirection, Role, utcnow

INBOX = """query Inbox($first: Int!) { conversations(first: $first) { edges { cursor node {
  id status unreadCount lastMessageAt contact { id name phoneNumber }
  assignee { id role user { name } } lastMessage { id text direction createdAt } } }
  pageInfo { hasNextPage endCursor } } }"""
FLOOR = "{ __typename }"
PAGE = 50
ROUNDS = 7


def per_call(function: Callable[[], Any], calls: int) -> float:
    """Median seconds per call of a synchronous function."""
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


async def per_await(function: Callable[[], Awaitable[Any]], calls: int) -> float:
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls):
            await function()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


async def seed(url: str) -> str:
    """A workspace whose Admin sees 50 conversations; the Admin's email."""
    db = Database(url)
    async with db.session() as session:
        org = await create_org(session, name="Bench")
    async with db.session(org.id) as session:
        admin = await create_actor(session, Role.ADMIN, email="admin@bench.example")
        agent = await create_actor(session, Role.AGENT, email="agent@bench.example")
        account = await create_whatsapp_account(session)
        for i in range(PAGE):
            assignee = (admin if i % 2 else agent).membership.id
            conversation = await create_conversation(
                session, account=account, assignee_membership_id=assignee
            )
            await create_message(session, conversation, direction=MessageDirection.INBOUND)
    await db.dispose()
    return admin.user.email


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1_000_000:.1f} µs"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
    passwords.BCRYPT_ROUNDS = 4  # logins are set-up here, not measured
    await migrate(url)
    email = await seed(url)
    settings = load_settings(
        _env_file=None,
        env="test",
        var_dir=workdir / "var",
        database_url=url,
        jwt_secret="b" * 40,
        encryption_keys=generate_encryption_key_entry("b1"),
        in_process_worker=False,
        log_level="WARNING",
        rate_limit_graphql_ip="1000000/minute",
        rate_limit_graphql_workspace="1000000/minute",
        rate_limit_graphql_cost_member="100000000:1000000/second",
        rate_limit_graphql_cost_workspace="100000000:1000000/second",
    )

    # The guard's own parts, in isolation
    document = parse(INBOX)
    variables = {"first": PAGE}
    graphql_schema = schema._schema
    cost = operation_cost(graphql_schema, document, None, variables)
    assert cost is not None
    assert cost.nodes == PAGE, cost
    counting = per_call(lambda: operation_cost(graphql_schema, document, None, variables), 2000)
    validating = per_call(lambda: validate(graphql_schema, document), 300)
    budgets = CostBudgets(settings)
    principal = Principal(
        user_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        membership_id=uuid.uuid4(),
        role=Role.ADMIN,
        token_expires_at=utcnow(),
    )
    charging = await per_await(lambda: budgets.charge(principal, cost.points), 2000)
    await budgets.close()
    charging_redis = None
    if args.redis_url:
        redis_budgets = CostBudgets(settings.model_copy(update={"redis_url": args.redis_url}))
        charging_redis = await per_await(lambda: redis_budgets.charge(principal, cost.points), 300)
        await redis_budgets.close()

    # The whole request, and its floor, through the app
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            token = (await login(client, email)).json()["accessToken"]
            headers = {"Authorization": f"Bearer {token}"}

            async def request(query: str, variables: dict[str, Any] | None) -> None:
                response = await client.post(
                    "/graphql", json={"query": query, "variables": variables}, headers=headers
                )
                body = response.json()
                assert response.status_code == 200, response.text
                assert "errors" not in body, response.text

            for _ in range(20):  # warm-up: caches, the connection pool
                await request(INBOX, variables)
                await request(FLOOR, None)
            inbox_times, floor_times = [], []
            for _ in range(args.requests):  # interleaved: drift hits both alike
                started = time.perf_counter()
                await request(INBOX, variables)
                inbox_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                await request(FLOOR, None)
                floor_times.append(time.perf_counter() - started)
    whole, floor = statistics.median(inbox_times), statistics.median(floor_times)

    print(
        f"{url.split(':')[0]}, inbox page of {PAGE} ({cost.nodes} nodes), {args.requests} requests"
    )
    print(f"  whole request, inbox page           {ms(whole)}")
    print(f"  floor, {{ __typename }}               {ms(floor)}")
    print(f"  validation of the inbox document    {us(validating)}")
    print(
        f"  cost calculation                    {us(counting)}"
        f"  = {counting / whole:.2%} of the request, {counting / validating:.0%} of validation"
    )
    print(f"  budget charge, memory               {us(charging)}  = {charging / whole:.2%}")
    if charging_redis is not None:
        print(
            f"  budget charge, Redis                {us(charging_redis)}"
            f"  = {charging_redis / whole:.2%}"
        )


if __name__ == "__main__":
    asyncio.run(main())
