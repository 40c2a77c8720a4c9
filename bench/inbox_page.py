"""The inbox page beside its floor: server CPU per request, requests/s, SQL statements.

    .venv/bin/python -m bench.inbox_page [--database-url URL] [--redis-url URL]
        [--requests 200] [--rounds 5]

One run, two servers side by side, each a subprocess on a free loopback port, on one
fresh migrated database (SQLite unless `--database-url`; a PostgreSQL database that does
not exist yet is created) holding a workspace with 60 conversations, each with a contact,
an assignee (an Admin, an Agent or nobody) and a last message:

- weflux: a real `weflux serve --no-worker`; an Admin POSTs `bench.query_cost.INBOX`
  (`conversations(first: 50)` with contact, assignee and its user, last message) to
  `/graphql`, authenticated, rate limited, cost-charged and under its deadline.
- floor: `bench.inbox_floor_app` under uvicorn with `weflux serve`'s options: the same
  statements through SQLAlchemy Core and the same `data` serialised by orjson.

Each round runs `--requests` requests against each server in turn (alternating which
goes first), `--concurrency` in flight on keep-alive connections from this process,
and reads the CPU time of the server's process (to the nanosecond) around them: server
CPU per request, and requests/s. The figures are the median of the rounds, with their
range (the machine is shared: read the ranges). Statements per page are counted in this
process, the apps served in process on the same database, at page sizes 10 and 50.
Before measuring, the floor's `data` is checked equal to weflux's at both sizes.

Goal (issue 11, goal 2): weflux at most 4x the floor's CPU per request, and as many
statements at 10 as at 50. The exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.fanout import RAW_OPTIONS, Server, loopback, server_env, spawn
from bench.inbox_floor_app import create_floor
from bench.query_cost import INBOX, PAGE
from tests.fixtures.api import login
from tests.fixtures.factories import (
    create_actor,
    create_conversation,
    create_message,
    create_org,
    create_whatsapp_account,
)
from tests.fixtures.live import free_port
from weflux.app import create_app
from weflux.auth import passwords
from weflux.config import generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import MessageDirection, Role
from weflux.runtime import runtime_of

SIZES = (10, 50)
CONVERSATIONS = 60
CPU_GOAL = 4.0
STARTUP_SECONDS = 120
FLOOR_APP = "bench.inbox_floor_app:app_from_env"
# Generous budgets: the benchmark measures the path, not the limits.
BUDGETS = {
    "WEFLUX_RATE_LIMIT_GRAPHQL_COST_WORKSPACE": "100000000:1000000/second",
    "WEFLUX_RATE_LIMIT_GRAPHQL_COST_MEMBER": "100000000:1000000/second",
    "WEFLUX_RATE_LIMIT_GRAPHQL_IP": "1000000/minute",
    "WEFLUX_RATE_LIMIT_GRAPHQL_WORKSPACE": "1000000/minute",
}


# --- the database ---------------------------------------------------------------------


async def ensure_database(url: str) -> None:
    """Create a PostgreSQL database named by `url` when it does not exist yet."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    server: AsyncEngine = create_async_engine(
        parsed.set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with server.connect() as connection:
            found = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            )
            if not found:
                await connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        await server.dispose()


async def seed(url: str) -> tuple[uuid.UUID, str]:
    """A workspace of CONVERSATIONS conversations; its id and its Admin's email."""
    await ensure_database(url)
    await migrate(url)
    passwords.BCRYPT_ROUNDS = 4  # the stored hash's cost: a fast login
    tag = uuid.uuid4().hex[:8]
    db = Database(url)
    try:
        async with db.session() as session:
            org = await create_org(session, name=f"Inbox bench {tag}")
        async with db.session(org.id) as session:
            admin = await create_actor(session, Role.ADMIN, email=f"admin-{tag}@bench.example")
            agent = await create_actor(session, Role.AGENT, email=f"agent-{tag}@bench.example")
            account = await create_whatsapp_account(  # unique: a database run before
                session,
                phone_number_id=f"9{secrets.randbelow(10**14):014d}",
                business_account_id=f"9{secrets.randbelow(10**14):014d}",
                webhook_key=f"inbox-{tag}",
            )
            assignees = (admin.membership.id, agent.membership.id, None)
            for i in range(CONVERSATIONS):
                conversation = await create_conversation(
                    session, account=account, assignee_membership_id=assignees[i % 3]
                )
                await create_message(session, conversation, direction=MessageDirection.INBOUND)
    finally:
        await db.dispose()
    return org.id, admin.user.email


# --- statements and answers, in process ------------------------------------------------


@contextmanager
def counting(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements `engine` sends inside the block."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@dataclass
class InProcess:
    statements: dict[int, tuple[int, int]]  # page size -> (weflux, floor)


async def in_process(url: str, org_id: uuid.UUID, email: str, workdir: Path) -> InProcess:
    """Statements per page of each app, and the floor's answer checked against weflux's."""
    settings = load_settings(
        _env_file=None,
        env="test",
        var_dir=workdir / "in-process",
        database_url=url,
        jwt_secret="b" * 40,
        encryption_keys=generate_encryption_key_entry("b1"),
        in_process_worker=False,
        log_level="WARNING",
        **{name.removeprefix("WEFLUX_").lower(): value for name, value in BUDGETS.items()},
    )
    weflux_app = create_app(settings)
    floor_app = create_floor(url, org_id)
    floor_engine: AsyncEngine = floor_app.state.engine
    statements: dict[int, tuple[int, int]] = {}
    async with LifespanManager(weflux_app):
        weflux_engine = runtime_of(weflux_app).db.engine
        weflux = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=weflux_app), base_url="http://weflux"
        )
        floor = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=floor_app), base_url="http://floor"
        )
        async with weflux, floor:
            headers = await authorization(weflux, email)
            await weflux.post("/graphql", json={"query": "{ viewer { id } }"}, headers=headers)
            for size in SIZES:
                with counting(weflux_engine) as ours:
                    answer = await weflux.post(
                        "/graphql",
                        json={"query": INBOX, "variables": {"first": size}},
                        headers=headers,
                    )
                with counting(floor_engine) as theirs:
                    expected = await floor.post("/inbox", json={"first": size})
                body = answer.json()
                if "errors" in body or body["data"] != expected.json()["data"]:
                    raise SystemExit(
                        f"the floor's answer differs from weflux's at {size}:\n"
                        f"{body}\n{expected.json()}"
                    )
                statements[size] = (len(ours), len(theirs))
    await floor_engine.dispose()
    return InProcess(statements)


async def authorization(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await login(client, email)
    if response.status_code != 200:
        raise SystemExit(f"login failed: {response.status_code} {response.text}")
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


# --- the servers, measured --------------------------------------------------------------


async def wait_ready(server: Server, path: str, payload: dict[str, Any] | None = None) -> None:
    """Until `server` answers 200 at `path` (a loaded machine may take a minute to start)."""
    async with httpx.AsyncClient(base_url=server.base, timeout=5) as client:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline and server.process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if payload is None:
                    response = await client.get(path)
                else:
                    response = await client.post(path, json=payload)
                if response.status_code == 200:
                    return
            await asyncio.sleep(0.1)
    status = server.process.poll()
    raise RuntimeError(f"{server.name} did not come up (exit {status}):\n{server.log_tail()}")


@dataclass
class Round:
    cpu_per_request: float  # seconds
    per_second: float


async def measure(
    server: Server, path: str, payload: dict[str, Any], headers: dict[str, str], args: Any
) -> Round:
    """`args.requests` requests, `args.concurrency` in flight: the server's CPU and rate."""
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as client:
        counter = itertools.count()

        async def worker() -> None:
            while next(counter) < args.requests:
                response = await client.post(path, json=payload, headers=headers)
                if response.status_code != 200 or b'"errors"' in response.content:
                    raise SystemExit(f"{server.name}: {response.status_code} {response.text}")

        warm = itertools.count()
        while next(warm) < args.concurrency:  # one connection each, opened before the clock
            await client.post(path, json=payload, headers=headers)
        cpu, started = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
    return Round(cpu / args.requests, args.requests / elapsed)


@dataclass
class Results:
    weflux: list[Round]
    floor: list[Round]


async def served(args: Any, url: str, org_id: uuid.UUID, email: str, workdir: Path) -> Results:
    env = server_env(url, workdir) | BUDGETS | {"WEFLUX_BENCH_ORG_ID": str(org_id)}
    if args.redis_url:  # limits, budgets and the broker in Redis
        env["WEFLUX_REDIS_URL"] = args.redis_url
    weflux_port, floor_port = free_port(), free_port()
    python = sys.executable
    weflux = spawn(
        "weflux",
        [python, "-m", "weflux", "serve", "--no-worker", *loopback(weflux_port)],
        env,
        workdir,
        weflux_port,
    )
    floor = spawn(
        "floor",
        [python, "-m", "uvicorn", "--factory", FLOOR_APP, *RAW_OPTIONS, *loopback(floor_port)],
        env,
        workdir,
        floor_port,
    )
    try:
        await asyncio.gather(
            wait_ready(weflux, "/readyz"), wait_ready(floor, "/inbox", {"first": 1})
        )
        async with httpx.AsyncClient(base_url=weflux.base, timeout=30) as client:
            headers = await authorization(client, email)
        payload = {"query": INBOX, "variables": {"first": PAGE}}
        sides: dict[str, tuple[Server, str, dict[str, Any], dict[str, str]]] = {
            "weflux": (weflux, "/graphql", payload, headers),
            "floor": (floor, "/inbox", {"first": PAGE}, {}),
        }
        for side in sides.values():  # warm-up: imports, caches, the connection pools
            await measure(*side, argparse.Namespace(requests=30, concurrency=args.concurrency))
        results = Results([], [])
        for number in range(args.rounds):
            order = ("weflux", "floor") if number % 2 == 0 else ("floor", "weflux")
            for name in order:
                getattr(results, name).append(await measure(*sides[name], args))
        return results
    except BaseException:
        for server in (weflux, floor):
            print(f"--- {server.name} log (tail)\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        weflux.stop()
        floor.stop()


# --- the report -------------------------------------------------------------------------


def spread(values: list[float], scale: float, unit: str, digits: int = 1) -> str:
    median = statistics.median(values) * scale
    return (
        f"{median:.{digits}f} {unit} ({min(values) * scale:.{digits}f}-"
        f"{max(values) * scale:.{digits}f})"
    )


def report(args: Any, url: str, counts: InProcess, results: Results) -> bool:
    """Print the comparison; True when every goal is met."""
    cpu = [r.cpu_per_request for r in results.weflux]
    floor_cpu = [r.cpu_per_request for r in results.floor]
    ratios = [a / b for a, b in zip(cpu, floor_cpu, strict=True)]
    rates = [r.per_second for r in results.weflux]
    floor_rates = [r.per_second for r in results.floor]
    rate_ratios = [b / a for a, b in zip(rates, floor_rates, strict=True)]
    print(
        f"{make_url(url).get_backend_name()}: inbox page of {PAGE} as an Admin; "
        f"{args.rounds} rounds of {args.requests} requests, {args.concurrency} in flight; "
        "median (min-max)"
    )
    print(f"  {'':28}{'weflux':>26}{'floor':>26}{'ratio':>24}")
    print(
        f"  {'server CPU per request':28}{spread(cpu, 1000, 'ms'):>26}"
        f"{spread(floor_cpu, 1000, 'ms', 2):>26}{spread(ratios, 1, 'x'):>24}"
    )
    print(
        f"  {'requests/s':28}{spread(rates, 1, '/s', 0):>26}"
        f"{spread(floor_rates, 1, '/s', 0):>26}{spread(rate_ratios, 1, 'x'):>24}"
    )
    for size in SIZES:
        ours, theirs = counts.statements[size]
        label = f"SQL statements, page of {size}"
        print(f"  {label:28}{ours:>26}{theirs:>26}{ours / theirs:>23.1f}x")
    cpu_met = statistics.median(ratios) <= CPU_GOAL
    constant = len({counts.statements[size][0] for size in SIZES}) == 1
    print(
        f"goal: CPU <= {CPU_GOAL:g}x the floor: {'met' if cpu_met else 'MISSED'}; "
        f"statements constant in page size: {'met' if constant else 'MISSED'}"
    )
    return cpu_met and constant


async def run(args: Any, workdir: Path) -> bool:
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/inbox.db"
    org_id, email = await seed(url)
    counts = await in_process(url, org_id, email, workdir)
    results = await served(args, url, org_id, email, workdir)
    return report(args, url, counts, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--redis-url", default=None, help="weflux's WEFLUX_REDIS_URL")
    parser.add_argument("--requests", type=int, default=200, help="per server and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, DB)")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1 or args.concurrency < 1:
        parser.error("--requests, --rounds and --concurrency must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="weflux-inbox-"))
    os.environ.setdefault("WEFLUX_LOG_LEVEL", "WARNING")
    try:
        met = asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
