"""The one-message webhook beside its floor (issue 11, goal 1), in one run.

    .venv/bin/python -m bench.webhook [--database-url URL] [--posts 300] [--rate 100]
                                      [--profile PATH]

Two servers, each a subprocess on a free loopback port, under the same uvicorn options:

- weflux: a real `weflux serve --no-worker` on a fresh migrated database (SQLite unless
  `--database-url`), posted Meta-signed one-message webhooks on the number's keyed URL
  (`/webhooks/whatsapp/{webhookKey}`), each from a new sender unless said otherwise;
- floor: `bench.raw_webhook_app`, a bare Starlette endpoint that checks the same HMAC and
  INSERTs the raw body (one statement, one transaction) into the same database.

Measured, each on both servers:

1. server CPU per webhook from a new sender: CPU time of the server process (every
   thread, to the nanosecond: `bench.fanout.process_cpu_seconds`) over `--posts`
   sequential posts (after a warm-up), divided by the posts; in `--rounds` rounds, each
   weflux's window then the floor's, so a moment's slowdown of the machine falls on one
   round, not on one side (it used to measure all of weflux's posts, then all of the
   floor's: about one run in four went over 3x on SQLite, `main` and older alike); the
   goal is judged on the median round's ratio, and every round's is printed;
2. SQL statements per webhook, new sender and known sender: counted in this process on
   the same app (`before_cursor_execute`; BEGIN/COMMIT not counted); the floor's is 1;
3. ack p50/p99 at `--rate` webhooks/s offered (open loop, `--seconds` long);
4. sustained throughput: `--burst` posts with 32 in flight, acknowledged per second, and
   processed per second (the burst's messages stored by the server, from the first post
   to the last one it stored: an acknowledgement may leave its processing to the queue);
   then every message counted in the database (nothing lost) once the queue drained.

Goals (exit 1 when one is missed): CPU <= 3x the floor, <= 6 statements for a new sender
and no more for a known one, >= 300 webhooks/s processed, ack p99 <= 50 ms at 100/s,
nothing lost.
(The issue asks "fewer for a known one"; on PostgreSQL both now run 1, the sender found by
the statement that writes, so the check is "<= new": docs/operations/performance.md, goal 1.)
The load generator runs on the same machine: throughput is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import event, func
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import select

from bench.fanout import (
    PROFILED,
    SECRET,
    Server,
    Workspace,
    loopback,
    prepare,
    server_env,
    spawn,
)
from bench.fanout import webhook as signed_webhook
from bench.raw_webhook_app import metadata as floor_metadata
from tests.fixtures.live import free_port
from weflux.app import create_app
from weflux.config import Settings, load_settings
from weflux.db import Database
from weflux.models import Message, WebhookEvent, WebhookEventStatus, WhatsAppAccount
from weflux.realtime.broker import InProcessBroker
from weflux.services import webhook_queue

ROOT = Path(__file__).resolve().parent.parent
FLOOR_APP = "bench.raw_webhook_app:app"
# The uvicorn options of `weflux serve` (weflux.cli.UVICORN_OPTIONS), on the command line.
FLOOR_OPTIONS = [
    *("--app-dir", str(ROOT), "--lifespan", "off", "--log-level", "warning"),
    *("--no-access-log", "--no-server-header", "--no-proxy-headers"),
]
GOAL_CPU_RATIO = 3.0
GOAL_NEW_STATEMENTS = 6
GOAL_THROUGHPUT = 300.0
GOAL_P99_MS = 50.0
IN_FLIGHT = 32
STILL = 2.0  # seconds with no message stored: the burst's processing is over


class Connection:
    """A keep-alive HTTP/1.1 connection that posts pre-built requests: far cheaper than
    httpx, so the load generator (on the same 2 cores) takes less from the servers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Connections handed out one request at a time."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.idle: list[Connection] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        while self.idle:  # an idle connection the server closed (keep-alive timeout): next
            connection = self.idle.pop()
            try:
                answer = await connection.post(path, body, headers)
            except (asyncio.IncompleteReadError, ConnectionError):
                connection.close()
                continue
            self.idle.append(connection)
            return answer
        connection = await Connection.open(self.base)
        try:
            answer = await connection.post(path, body, headers)
        except BaseException:
            connection.close()
            raise
        self.idle.append(connection)
        return answer

    def close(self) -> None:
        for connection in self.idle:
            connection.close()


@dataclass
class Target:
    """One server as the load generator sees it."""

    server: Server
    path: str
    sign: Callable[[str], tuple[bytes, dict[str, str]]]
    # What it has processed so far (weflux: messages stored; None: the floor, whose
    # acknowledgement is all its work).
    processed: Callable[[], Awaitable[int]] | None = None


@dataclass
class Result:
    cpu_ms: list[float]  # one per round
    p50_ms: float
    p99_ms: float
    throughput: float
    processed: float


def sender() -> str:
    return f"1{secrets.randbelow(10**13):013d}"


WARM_UP = 20  # posts before the first CPU window: imports, caches, connections


async def cpu_per_post(client: Pool, target: Target, posts: int) -> float:
    before = target.server.cpu_seconds()
    for _ in range(posts):
        await post(client, target, sender())
    return (target.server.cpu_seconds() - before) / posts * 1000


async def cpu_rounds(targets: list[Target], posts: int, rounds: int) -> list[list[float]]:
    """Each target's CPU per post in each round, the targets' windows taking turns."""
    clients = [Pool(target.server.base) for target in targets]
    try:
        for client, target in zip(clients, targets, strict=True):
            for _ in range(WARM_UP):
                await post(client, target, sender())
        found: list[list[float]] = [[] for _ in targets]
        for _ in range(rounds):
            for k, (client, target) in enumerate(zip(clients, targets, strict=True)):
                found[k].append(await cpu_per_post(client, target, posts))
        return found
    finally:
        for client in clients:
            client.close()


async def post(client: Pool, target: Target, who: str) -> float:
    body, headers = target.sign(who)
    started = time.perf_counter()
    status, text = await client.post(target.path, body, headers)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{target.server.name}: {status} {text[:200]!r}")
    return elapsed


async def acks_at_rate(
    client: Pool, target: Target, rate: float, seconds: float
) -> tuple[float, float]:
    """Open loop: a post every 1/rate s whatever the answers; (p50, p99) in ms."""
    tasks: list[asyncio.Task[float]] = []
    start = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(client, target, sender())))
    latencies = sorted(await asyncio.gather(*tasks))
    return (
        statistics.median(latencies) * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


async def burst(client: Pool, target: Target, posts: int) -> tuple[float, float]:
    """Posts with IN_FLIGHT at once: (acknowledged, processed) webhooks per second.

    Processed: the burst's messages stored by the server, over the time from the first
    post to the last message it stored (until none came for `STILL` seconds): what the
    process sustains, where an acknowledgement may leave its processing to the queue (or,
    when the queue is full, to the worker's sweep, which the server runs without here)."""
    pending = iter(range(posts))

    async def lane() -> None:
        for _ in pending:
            await post(client, target, sender())

    before = await target.processed() if target.processed else 0
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    acked_at = time.perf_counter()
    acked = posts / (acked_at - started)
    if target.processed is None:
        return acked, acked
    count, last = await target.processed(), acked_at
    while count - before < posts:
        await asyncio.sleep(0.05)
        now = await target.processed()
        if now != count:
            count, last = now, time.perf_counter()
        elif time.perf_counter() - last > STILL:
            break
    return acked, (count - before) / (last - started)


async def measure(target: Target, args: argparse.Namespace, cpu: list[float]) -> Result:
    client = Pool(target.server.base)
    try:
        p50, p99 = await acks_at_rate(client, target, args.rate, args.seconds)
        if target.processed is not None:  # the rate's events processed first
            await settled(target.processed)
        throughput, processed = await burst(client, target, args.burst)
    finally:
        client.close()
    return Result(cpu, p50, p99, throughput, processed)


async def settled(count: Callable[[], Awaitable[int]]) -> None:
    """Until `count` stays the same for a few polls (the server's queue drained)."""
    last, still = await count(), 0
    while still < 4:
        await asyncio.sleep(0.05)
        now = await count()
        still = still + 1 if now == last else 0
        last = now


# --- statements, counted in process --------------------------------------------------


def bench_settings(url: str, workdir: Path) -> Settings:
    env = server_env(url, workdir)
    values = {
        k.removeprefix("WEFLUX_").lower(): v
        for k, v in env.items()
        if k.startswith("WEFLUX_") and not k.startswith("WEFLUX_RATE_LIMIT_")
    }
    return load_settings(_env_file=None, **values, in_process_worker=False)


async def statements(url: str, workdir: Path, space: Workspace, path: str) -> tuple[int, int]:
    """Statements of one webhook from a new sender, then from that (now known) sender."""
    settings = load_settings(
        _env_file=None,
        **{
            k.removeprefix("WEFLUX_").lower(): v
            for k, v in server_env(url, workdir).items()
            if k.startswith("WEFLUX_") and not k.startswith("WEFLUX_RATE_LIMIT_")
        },
        in_process_worker=False,
    )
    app = create_app(settings)
    counts = []
    async with LifespanManager(app) as manager:
        engine = app.state.runtime.db.engine.sync_engine
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meta") as client:
            who = sender()
            for k in range(3):  # a first sender (the routes get cached), then new, known
                seen: list[str] = []

                def count(_c: Any, _cur: Any, sql: str, *_: Any, _seen: list[str] = seen) -> None:
                    if sql.split(None, 1)[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}:
                        _seen.append(sql)

                body, headers = signed_webhook(space, who if k else sender(), "hi")
                event.listen(engine, "before_cursor_execute", count)
                try:
                    response = await client.post(
                        "/webhooks/whatsapp", content=body, headers=headers
                    )
                finally:
                    event.remove(engine, "before_cursor_execute", count)
                assert response.status_code == 200, response.text
                intake = getattr(app.state.runtime, "webhook_intake", None)
                if intake is not None:  # older versions processed in a background task
                    await intake.drain()
                counts.append(len(seen))
    return counts[1], counts[2]


async def webhook_path(url: str, space: Workspace) -> str:
    db = Database(url)
    try:
        async with db.session(space.org_id) as session:
            key = (
                await session.exec(
                    select(WhatsAppAccount.webhook_key).where(
                        WhatsAppAccount.phone_number_id == space.phone_number_id
                    )
                )
            ).one()
    finally:
        await db.dispose()
    return f"/webhooks/whatsapp/{key}"


async def messages_in(url: str, org_id: Any) -> int:
    db = Database(url)
    try:
        async with db.session(org_id) as session:
            return int((await session.exec(select(func.count()).select_from(Message))).one())
    finally:
        await db.dispose()


async def create_floor_table(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(floor_metadata.create_all)
    finally:
        await engine.dispose()


# --- the run --------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> int:
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/webhook.db"
    floor_url = args.database_url or f"sqlite+aiosqlite:///{workdir}/floor.db"
    space = await prepare(url)
    await create_floor_table(floor_url)
    path = await webhook_path(url, space)
    new_count, known_count = await statements(url, workdir, space, path)
    env = server_env(url, workdir)
    floor_env = env | {"BENCH_FLOOR_DATABASE_URL": floor_url, "BENCH_FLOOR_SECRET": SECRET}
    weflux_port, floor_port = free_port(), free_port()
    servers = [
        spawn(
            "weflux",
            [
                sys.executable,
                *(("-c", PROFILED.format(path=args.profile)) if args.profile else ("-m",)),
                *("weflux", "serve", "--no-worker", *loopback(weflux_port)),
            ],
            env,
            workdir,
            weflux_port,
        ),
        spawn(
            "floor",
            [sys.executable, "-m", "uvicorn", FLOOR_APP, *FLOOR_OPTIONS, *loopback(floor_port)],
            floor_env,
            workdir,
            floor_port,
        ),
    ]
    try:
        for server in servers:
            await wait_up(server)
        counter = Database(url)

        async def stored() -> int:
            async with counter.session(space.org_id) as session:
                return int((await session.exec(select(func.count()).select_from(Message))).one())

        weflux = Target(
            servers[0], "/webhooks/whatsapp", lambda who: signed_webhook(space, who, "hi"), stored
        )
        floor = Target(servers[1], "/webhook", lambda who: signed_webhook(space, who, "hi"))
        sent = WARM_UP + args.rounds * args.posts + int(args.rate * args.seconds) + args.burst
        results = []
        try:
            targets = [weflux, floor]
            cpus = await cpu_rounds(targets, args.posts, args.rounds)
            if weflux.processed is not None:  # the rounds' events processed first
                await settled(weflux.processed)
            for target, cpu in zip(targets, cpus, strict=True):
                results.append(await measure(target, args, cpu))
        finally:
            await counter.dispose()
        await settled_messages(url, space.org_id, sent + 3)
    except BaseException:
        for server in servers:
            print(f"--- {server.name} log (tail)\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for server in servers:
            server.stop()
    swept, problems = await sweep(url, workdir)
    lost = sent + 3 - await messages_in(url, space.org_id)
    print(f"left to the worker's sweep (the queue was full, or processing failed): {swept}")
    for problem in problems:
        print(f"  {problem}")
    return report(url, results[0], results[1], new_count, known_count, lost)


async def sweep(url: str, workdir: Path) -> tuple[int, list[str]]:
    """What the worker's sweep would do (the server ran without its worker): process the
    stored events left unprocessed; (how many, their distinct errors)."""
    db = Database(url, maintenance=True)
    try:
        async with db.session(all_workspaces="bench: unprocessed events") as session:
            rows = (
                await session.exec(
                    select(WebhookEvent.last_error).where(
                        WebhookEvent.status != WebhookEventStatus.PROCESSED
                    )
                )
            ).all()
    finally:
        await db.dispose()
    settings = bench_settings(url, workdir)
    app_db, broker = Database(url), InProcessBroker()
    try:
        while await webhook_queue.retry_due_events(
            app_db, broker, settings, settle=timedelta(0), batch_size=200
        ):
            pass
    finally:
        await app_db.dispose()
    return len(rows), sorted({row for row in rows if row})[:5]


async def wait_up(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=2) as client:
        for _ in range(1200):
            if server.process.poll() is not None:
                break
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} did not come up:\n{server.log_tail()}")


async def settled_messages(url: str, org_id: Any, expected: int, still: float = 5) -> int:
    """Messages stored once the server's queue drained: `expected`, or no change for
    `still` seconds."""
    count, since = await messages_in(url, org_id), time.monotonic()
    while count < expected and time.monotonic() - since < still:
        await asyncio.sleep(0.5)
        now = await messages_in(url, org_id)
        if now != count:
            count, since = now, time.monotonic()
    return count


def report(url: str, weflux: Result, floor: Result, new: int, known: int, lost: int) -> int:
    dialect = url.split(":", 1)[0]
    print(f"one-message webhook, {dialect}, weflux vs floor (HMAC + one INSERT), same run")
    print(f"{'':<34}{'weflux':>10}{'floor':>10}{'ratio':>8}  goal")
    missed = []

    def line(name: str, ours: float, theirs: float, goal: str, ok: bool, fmt: str = ".2f") -> None:
        ratio = ours / theirs if theirs else float("inf")
        print(
            f"{name:<34}{ours:>10{fmt}}{theirs:>10{fmt}}{ratio:>7.1f}x  "
            f"{goal} {'ok' if ok else 'MISSED'}"
        )
        if not ok:
            missed.append(name)

    # Each round's ratio of its two windows; the goal on the median round's.
    ratios = sorted(ours / theirs for ours, theirs in zip(weflux.cpu_ms, floor.cpu_ms, strict=True))
    cpu_ratio = statistics.median(ratios)
    print(
        f"server CPU, {len(ratios)} rounds (weflux's window, then the floor's): ratio per round "
        + ", ".join(f"{r:.1f}x" for r in ratios)
    )
    line(
        "server CPU ms/webhook (new sender)",
        statistics.median(weflux.cpu_ms),
        statistics.median(floor.cpu_ms),
        f"<= 3x (median round {cpu_ratio:.1f}x)",
        cpu_ratio <= GOAL_CPU_RATIO,
    )
    line("SQL statements, new sender", new, 1, "<= 6", new <= GOAL_NEW_STATEMENTS, ".0f")
    line("SQL statements, known sender", known, 1, "<= new", known <= new, ".0f")
    line("ack p50 ms at 100/s offered", weflux.p50_ms, floor.p50_ms, "-", True, ".1f")
    line(
        "ack p99 ms at 100/s offered",
        weflux.p99_ms,
        floor.p99_ms,
        "<= 50 ms",
        weflux.p99_ms <= GOAL_P99_MS,
        ".1f",
    )
    line("acknowledged webhooks/s, burst", weflux.throughput, floor.throughput, "-", True, ".0f")
    line(
        "sustained (processed) webhooks/s",
        weflux.processed,
        floor.processed,
        ">= 300/s",
        weflux.processed >= GOAL_THROUGHPUT,
        ".0f",
    )
    print(f"{'messages lost':<34}{lost:>10}{'':>10}{'':>8}  0 {'ok' if lost == 0 else 'MISSED'}")
    if lost:
        missed.append("nothing lost")
    print(f"goals missed: {', '.join(missed)}" if missed else "every goal met")
    return 1 if missed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--posts", type=int, default=300, help="sequential posts per CPU round")
    parser.add_argument("--rounds", type=int, default=5, help="CPU rounds, the servers in turn")
    parser.add_argument("--rate", type=float, default=100, help="webhooks/s offered")
    parser.add_argument("--seconds", type=float, default=5, help="how long at --rate")
    parser.add_argument("--burst", type=int, default=1500, help="posts for throughput")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", default=None, help="cProfile the weflux server to PATH")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-webhook-"))
    try:
        code = asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
