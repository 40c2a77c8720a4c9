"""Live fan-out: server CPU per delivered event per subscriber, memory per idle socket.

    .venv/bin/python -m bench.fanout [--subscribers 200 1000] [--events 50] [--repeat 1]
                                     [--database-url URL] [--profile PATH]

One run measures two servers side by side, each a subprocess on a free loopback port:

- weflux: a real `weflux serve --no-worker` on a fresh migrated database (SQLite unless
  `--database-url`), with a workspace, an Admin and a WhatsApp number. Every socket
  logs in as that Admin and subscribes to `messageAdded`; each event is one signed
  webhook POST carrying one text message from a new sender.
- raw: `bench.raw_ws_app` under uvicorn (same WebSocket options), a Starlette WebSocket
  that sends one pre-serialised `next` frame (the payload weflux sent) per `POST /publish`.

For each: VmRSS before and after opening N idle subscribed sockets (KiB per socket), and
the server process's CPU time (every thread, to the nanosecond: `process_cpu_seconds`)
while E events reach all N sockets (us of CPU per event per subscriber). The weflux
figure includes, once per event, webhook verification, durable storage and processing;
so each of those events is preceded by the same kind of event that no socket hears (a
webhook to a second workspace nobody subscribes to; `POST /publish?to=nobody`), its CPU
read on its own, for the reader to subtract.
The clients live in this process (asyncio + `websockets`, one reader task per socket).

Last, the lines of issue 11's goal 3 for each N: the fan-out's CPU per event per
subscriber (each side's delivery events minus its events that nobody hears: the
webhook's cost is goal 1's) and the KiB per idle socket, weflux beside the floor, with
the ratio and the goal; the command exits 1 when a median ratio misses its goal. The
machine's noise is large (other work shares the cores and their caches): use `--repeat`
and read ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlmodel import func, select
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from tests.fixtures import webhooks as wh
from tests.fixtures.api import login
from tests.fixtures.factories import PASSWORD, create_actor, create_org, create_whatsapp_account
from tests.fixtures.live import free_port
from tests.fixtures.ws import GraphQLSocket
from weflux.auth import passwords
from weflux.cli import WS_MAX_MESSAGE_BYTES
from weflux.config import generate_encryption_key_entry
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import Message, Role
from weflux.throttle.ratelimit import LIMIT_NAMES

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-fanout-app-secret-0123456789"  # noqa: S105  (a benchmark's throwaway)
QUERY = "subscription { messageAdded { id text direction conversation { id } } }"
SUBPROTOCOL = Subprotocol("graphql-transport-ws")
PONG = json.dumps({"type": "pong"})
SETTLE = 1.0  # seconds for subscriptions to be listening and memory to settle
EVENT_TIMEOUT = 30.0  # seconds for one event to reach every socket
# After each event, the CPU is read once the server is quiet again (its clock moved less
# than QUIET_CPU in QUIET_GAP): what it does once the last frame is out (its unit of work
# closing, say) is charged to that event, not to the next, and the pause stays short
# (a long one lets the machine's other work evict the caches).
QUIET_GAP = 0.002
QUIET_CPU = 20e-6
QUIET_LIMIT = 0.1
# Client sockets: no compression and no keepalive pings (browsers send none either).
# (GraphQLSocket.connect passes compression=None itself.)
CLIENT_OPTIONS: dict[str, Any] = {"ping_interval": None, "max_queue": None}


# --- the server processes -----------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid`, all its threads (ended ones too), user and
    system, to the nanosecond: Linux's CPU-time clock of that process, the clock that
    `clock_getcpuclockid(pid)` returns (its id is `~pid << 3 | 2`, CPUCLOCK_SCHED), read
    from outside. `/proc/<pid>/stat`'s utime+stime count the same time in clock ticks
    (10 ms), too coarse for a phase of a tenth of a second; summing the threads'
    `/proc/<pid>/task/*/schedstat` would miss threads that ended (aiosqlite's)."""
    return time.clock_gettime_ns((~pid << 3) | 2) / 1e9


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """CPU time of the whole server process: see `process_cpu_seconds`."""
        return process_cpu_seconds(self.process.pid)

    async def quiet_cpu_seconds(self) -> float:
        """The CPU clock once the process has (nearly) stopped using CPU, at most after
        QUIET_LIMIT seconds."""
        deadline = time.monotonic() + QUIET_LIMIT
        before = self.cpu_seconds()
        while True:
            await asyncio.sleep(QUIET_GAP)
            now = self.cpu_seconds()
            if now - before < QUIET_CPU or time.monotonic() > deadline:
                return now
            before = now

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def spawn(name: str, argv: list[str], env: dict[str, str], workdir: Path, port: int) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
            argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Server(name, process, f"http://127.0.0.1:{port}", log)


async def wait_ready(server: Server, probe: Callable[[httpx.AsyncClient], Awaitable[bool]]) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=2) as client:
        for _ in range(1200):  # up to a minute (a profiled server starts slowly)
            if server.process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if await probe(client):
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} did not come up:\n{server.log_tail()}")


# --- the clients ----------------------------------------------------------------------


@dataclass
class Tally:
    """`next` frames received, per socket and in all; wakes whoever waits for a total."""

    counts: list[int] = field(default_factory=list)
    total: int = 0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    problems: list[str] = field(default_factory=list)
    last_payload: Any = None

    def add_socket(self) -> int:
        self.counts.append(0)
        return len(self.counts) - 1

    def got(self, index: int, payload: Any) -> None:
        self.counts[index] += 1
        self.total += 1
        self.last_payload = payload
        if self.total >= self.target:
            self.reached.set()

    async def wait_total(self, target: int, timeout: float) -> None:  # noqa: ASYNC109
        self.target = target
        if self.total >= target:
            return
        self.reached.clear()
        try:
            await asyncio.wait_for(self.reached.wait(), timeout)
        except TimeoutError:
            missing = sum(1 for c in self.counts if c < target // max(len(self.counts), 1))
            raise RuntimeError(
                f"{self.total}/{target} frames after {timeout:.0f}s ({missing} sockets behind); "
                f"problems: {self.problems[:3]}"
            ) from None


async def read_frames(connection: ClientConnection, index: int, tally: Tally) -> None:
    """The reader of one socket: count `next` frames, answer pings, note anything else."""
    try:
        async for raw in connection:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "next" and not frame.get("payload", {}).get("errors"):
                tally.got(index, frame["payload"])
            elif kind == "ping":
                await connection.send(PONG)
            else:
                tally.problems.append(f"socket {index}: {str(frame)[:300]}")
    except websockets.ConnectionClosed as closed:
        tally.problems.append(f"socket {index} closed: {closed}")


@dataclass
class Clients:
    tally: Tally = field(default_factory=Tally)
    connections: list[ClientConnection] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self, count: int, batch: int, opener: Callable[[], Awaitable[Any]]) -> None:
        """Open `count` subscribed sockets, `batch` at a time, each with its reader."""
        for start in range(0, count, batch):
            opened = await asyncio.gather(*(opener() for _ in range(min(batch, count - start))))
            for connection in opened:
                self.connections.append(connection)
                index = self.tally.add_socket()
                self.readers.append(asyncio.create_task(read_frames(connection, index, self.tally)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True), 10
            )
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.connections.clear()
        self.readers.clear()


def weflux_opener(base: str, token: str) -> Callable[[], Awaitable[ClientConnection]]:
    async def open_one() -> ClientConnection:
        socket = await GraphQLSocket.connect(base, token, **CLIENT_OPTIONS)
        await socket.subscribe(QUERY)
        return socket.connection

    return open_one


def raw_opener(base: str) -> Callable[[], Awaitable[ClientConnection]]:
    async def open_one() -> ClientConnection:
        url = base.replace("http://", "ws://") + "/ws"
        connection = await websockets.connect(
            url, subprotocols=[SUBPROTOCOL], compression=None, **CLIENT_OPTIONS
        )
        await connection.send(json.dumps({"type": "connection_init", "payload": {}}))
        ack = json.loads(await asyncio.wait_for(connection.recv(), 5))
        assert ack["type"] == "connection_ack", ack
        await connection.send(
            json.dumps({"id": "1", "type": "subscribe", "payload": {"query": QUERY}})
        )
        return connection

    return open_one


# --- one side of the comparison ------------------------------------------------------


@dataclass
class Result:
    kib_per_socket: float
    us_per_delivery: float
    median_ms_to_last: float
    cpu_seconds: float  # the whole delivery phase
    alone_seconds: float  # the same events with no subscriber


async def measure(
    server: Server,
    opener: Callable[[], Awaitable[ClientConnection]],
    send_event: Callable[[str, int], Awaitable[None]],
    alone_done: Callable[[int], Awaitable[None]],
    subscribers: int,
    events: int,
    batch: int,
) -> tuple[Result, Any]:
    """Warm up; RSS of N idle sockets; then E rounds, each one event that no socket hears
    and one event that reaches all N, the server's CPU read around each once it is quiet.
    `send_event(phase, k)` emits event k of a phase ("alone" goes where nobody listens,
    "fan" to the N); `alone_done(k)` returns once k events of "alone" were processed.

    The two kinds alternate event by event with the same sockets open, so both see the
    same machine (other work on the cores, caches, frequency) and their difference is
    the fan-out's own cost; the CPU clock counts nanoseconds, not ticks."""
    warm = Clients()
    await warm.open(1, 1, opener)
    await asyncio.sleep(SETTLE / 2)
    await send_event("warm", 1)
    await warm.tally.wait_total(1, EVENT_TIMEOUT)
    sample = warm.tally.last_payload
    await warm.close()

    await asyncio.sleep(SETTLE / 2)
    rss = server.rss_kib()
    clients = Clients()
    try:
        await clients.open(subscribers, batch, opener)
        await asyncio.sleep(SETTLE)
        grown = server.rss_kib() - rss

        # Once each, unmeasured: both paths warm with the N sockets open.
        await send_event("alone", 1)
        await alone_done(1)
        await send_event("fan", 1)
        await clients.tally.wait_total(subscribers, EVENT_TIMEOUT)

        latencies = []
        alone = spent = 0.0
        cpu = await server.quiet_cpu_seconds()
        for k in range(2, events + 2):
            await send_event("alone", k)
            await alone_done(k)
            between = await server.quiet_cpu_seconds()
            alone += between - cpu
            started = time.perf_counter()
            await send_event("fan", k)
            await clients.tally.wait_total(subscribers * k, EVENT_TIMEOUT)
            latencies.append(time.perf_counter() - started)
            cpu = await server.quiet_cpu_seconds()
            spent += cpu - between
        behind = [c for c in clients.tally.counts if c != events + 1]
        if behind or clients.tally.problems:
            raise RuntimeError(
                f"{server.name}: {len(behind)} sockets with a wrong count; "
                f"problems: {clients.tally.problems[:3]}"
            )
    finally:
        await clients.close()
    return (
        Result(
            kib_per_socket=grown / subscribers,
            us_per_delivery=spent / (events * subscribers) * 1e6,
            median_ms_to_last=statistics.median(latencies) * 1000,
            cpu_seconds=spent,
            alone_seconds=alone,
        ),
        sample,
    )


# --- set-up ---------------------------------------------------------------------------


@dataclass
class Workspace:
    org_id: Any
    email: str
    phone_number_id: str
    waba_id: str
    display_phone_number: str


async def prepare(url: str) -> Workspace:
    """Migrate, then a workspace, an Admin and a WhatsApp number (ids unique per run)."""
    await migrate(url)
    passwords.BCRYPT_ROUNDS = 4  # the stored hash's cost: a fast login
    tag = secrets.token_hex(4)

    def digits() -> str:
        return f"9{secrets.randbelow(10**14):014d}"

    db = Database(url)
    try:
        async with db.session() as session:
            org = await create_org(session, name=f"Fanout {tag}")
        async with db.session(org.id) as session:
            actor = await create_actor(session, Role.ADMIN, email=f"fanout-{tag}@example.com")
            account = await create_whatsapp_account(
                session,
                phone_number_id=digits(),
                business_account_id=digits(),
                display_phone_number=f"1555{secrets.randbelow(10**7):07d}",
                webhook_key=f"fanout-{tag}-{secrets.token_hex(8)}",
            )
    finally:
        await db.dispose()
    return Workspace(
        org.id,
        actor.user.email,
        account.phone_number_id,
        account.business_account_id,
        account.display_phone_number,
    )


def server_env(url: str, workdir: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": url,
        "WEFLUX_VAR_DIR": str(workdir / "var"),
        "WEFLUX_JWT_SECRET": secrets.token_urlsafe(40),
        "WEFLUX_ENCRYPTION_KEYS": generate_encryption_key_entry("bench"),
        "WEFLUX_META_APP_SECRET": SECRET,
        "WEFLUX_META_GRAPH_URL": "http://127.0.0.1:9",  # nothing may reach Meta
        "WEFLUX_LOG_LEVEL": "WARNING",
        # generous rate limits, as the live tests set them (one login, many sockets)
        **{f"WEFLUX_RATE_LIMIT_{name.upper()}": "10000/minute" for name in LIMIT_NAMES},
        # and no socket caps: a thousand sockets of one session, from one address
        **{
            f"WEFLUX_WEBSOCKET_MAX_{cap}": "100000"
            for cap in ("PER_SESSION", "PER_MEMBER", "PER_IP", "PENDING_PER_IP")
        },
    }


def webhook(space: Workspace, sender: str, text: str) -> tuple[bytes, dict[str, str]]:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(
                space.phone_number_id,
                display_phone_number=space.display_phone_number,
                waba_id=space.waba_id,
                messages=[wh.text_message(from_wa_id=sender, body=text)],
                contacts=[wh.contact(wa_id=sender, name=f"Customer {sender[-4:]}")],
            )
        )
    )
    return body, {
        "X-Hub-Signature-256": wh.sign(body, SECRET),
        "Content-Type": "application/json",
    }


def loopback(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


# The uvicorn options of `weflux serve` (weflux.cli.UVICORN_OPTIONS), on the command line.
RAW_APP = "bench.raw_ws_app:app"
RAW_OPTIONS = [
    *("--app-dir", str(ROOT), "--lifespan", "off", "--log-level", "warning"),
    *("--no-access-log", "--no-server-header", "--no-proxy-headers"),
    *("--ws-per-message-deflate", "false", "--ws-max-size", str(WS_MAX_MESSAGE_BYTES)),
]
# `--profile`: the server under cProfile, dumped when it stops (uvicorn re-raises the
# stopping signal after its shutdown, which would end the process before the dump).
PROFILED = (
    "import cProfile, signal, sys; signal.raise_signal = lambda s: None; "
    "from weflux.cli import main; sys.argv = sys.argv[1:]; "
    "p = cProfile.Profile(); p.runcall(main); p.dump_stats({path!r})"
)
SENDER_PHASES = {"warm": 1, "alone": 2, "fan": 3}


async def run(args: argparse.Namespace, workdir: Path) -> tuple[Result, Result]:
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/fanout.db"
    space = await prepare(url)
    quiet = await prepare(url)  # the "alone" events' workspace: nobody listens there
    env = server_env(url, workdir)
    weflux_port, raw_port = free_port(), free_port()
    servers: list[Server] = []
    try:
        servers.append(
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
            )
        )
        servers.append(
            spawn(
                "raw",
                [sys.executable, "-m", "uvicorn", RAW_APP, *RAW_OPTIONS, *loopback(raw_port)],
                env,
                workdir,
                raw_port,
            )
        )
        weflux, raw = servers

        async def weflux_up(client: httpx.AsyncClient) -> bool:
            return (await client.get("/readyz")).status_code == 200

        async def raw_up(client: httpx.AsyncClient) -> bool:
            return (await client.post("/publish", json={})).status_code == 200

        await asyncio.gather(wait_ready(weflux, weflux_up), wait_ready(raw, raw_up))
        try:
            results = await compare(args, space, quiet, url, weflux, raw)
        except BaseException:
            for server in servers:
                print(f"--- {server.name} log (tail)\n{server.log_tail()}", file=sys.stderr)
            raise
    finally:
        for server in servers:
            server.stop()
    report(args, url, *results)
    return results


async def compare(
    args: argparse.Namespace,
    space: Workspace,
    quiet: Workspace,
    url: str,
    weflux: Server,
    raw: Server,
) -> tuple[Result, Result]:
    n, e, batch = args.subscribers, args.events, args.batch
    timeout = httpx.Timeout(30)
    async with (
        httpx.AsyncClient(base_url=weflux.base, timeout=timeout) as to_weflux,
        httpx.AsyncClient(base_url=raw.base, timeout=timeout) as to_raw,
    ):
        response = await login(to_weflux, space.email, PASSWORD)
        assert response.status_code == 200, response.text
        token = response.json()["accessToken"]

        async def post_webhook(phase: str, k: int) -> None:
            sender = f"1{SENDER_PHASES[phase]}{k:08d}"
            to = quiet if phase == "alone" else space
            body, headers = webhook(to, sender, f"{phase} {k}")
            response = await to_weflux.post("/webhooks/whatsapp", content=body, headers=headers)
            assert response.status_code == 200, response.text

        db = Database(url)

        async def stored(k: int) -> None:
            """Wait until the k-th webhook of the no-subscriber phase was processed."""
            deadline = time.monotonic() + EVENT_TIMEOUT
            while time.monotonic() < deadline:
                async with db.session(quiet.org_id) as session:
                    count = (await session.exec(select(func.count()).select_from(Message))).one()
                if count >= k:
                    return
                await asyncio.sleep(0.005)
            raise RuntimeError(f"webhook {k} was not processed in {EVENT_TIMEOUT:.0f}s")

        try:
            on_weflux, sample = await measure(
                weflux, weflux_opener(weflux.base, token), post_webhook, stored, n, e, batch
            )
        finally:
            await db.dispose()

        # The raw server sends the very payload weflux sent (the same bytes on the wire).
        async def publish(phase: str, k: int) -> None:
            sample["data"]["messageAdded"]["text"] = f"{phase} {k}"
            to = {"to": "nobody"} if phase == "alone" else {}
            response = await to_raw.post("/publish", json=sample, params=to)
            assert response.status_code == 200, response.text

        async def published(k: int) -> None:
            return None  # the answer comes once the (zero) sends are done

        on_raw, _ = await measure(raw, raw_opener(raw.base), publish, published, n, e, batch)
    return on_weflux, on_raw


def report(args: argparse.Namespace, url: str, weflux: Result, raw: Result) -> None:
    n, e = args.subscribers, args.events
    print(f"fan-out: {n} subscribers, {e} events, {url.split(':')[0]}, {os.cpu_count()} CPUs")
    columns = ("KiB/idle socket", "us CPU/event/subscriber", "server CPU s", "ms to last (med)")
    header = f"{'server':<11}" + "".join(f"{c:>{len(c) + 3}}" for c in columns)
    widths = [len(c) + 3 for c in columns]
    print(header)
    print("-" * len(header))

    def row(name: str, *cells: str) -> None:
        print(f"{name:<11}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))

    for name, r in (("weflux", weflux), ("raw", raw)):
        row(
            name,
            f"{r.kib_per_socket:.1f}",
            f"{r.us_per_delivery:.1f}",
            f"{r.cpu_seconds:.2f}",
            f"{r.median_ms_to_last:.1f}",
        )

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b > 0 else "n/a"

    row(
        "weflux/raw",
        ratio(weflux.kib_per_socket, raw.kib_per_socket),
        ratio(weflux.us_per_delivery, raw.us_per_delivery),
        ratio(weflux.cpu_seconds, raw.cpu_seconds),
        ratio(weflux.median_ms_to_last, raw.median_ms_to_last),
    )
    for what, r in (("weflux webhooks", weflux), ("raw POST /publish", raw)):
        print(
            f"{what} alone (0 subscribers): {r.alone_seconds:.2f} s CPU for {e} events = "
            f"{r.alone_seconds / e * 1e6:,.0f} us per event = "
            f"{r.alone_seconds / (e * n) * 1e6:.1f} us per event per subscriber at N={n}"
        )
    print(
        f"(weflux row minus its webhooks alone: "
        f"{(weflux.cpu_seconds - weflux.alone_seconds) / (e * n) * 1e6:.1f} us per event per "
        f"subscriber. CPU = the server process's CPU-time clock (all threads, ns); "
        f"memory = VmRSS growth over the N sockets.)"
    )


# Issue 11, goal 3: the fan-out's own CPU (the same events with no subscriber taken off
# on both sides) and the memory of an idle subscribed socket, against the raw floor.
CPU_GOAL = 3.0
MEMORY_GOAL = 1.6


@dataclass
class Goal:
    """One goal line: weflux and the floor over the repeats, and their ratios."""

    what: str
    subscribers: int
    limit: float
    weflux: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [
            w / f if f > 0 else float("inf") for w, f in zip(self.weflux, self.floor, strict=True)
        ]

    @property
    def met(self) -> bool:
        return statistics.median(self.ratios) <= self.limit


def fan_out_us(r: Result, events: int, subscribers: int) -> float:
    """CPU of the fan-out alone: the delivery phase minus the same events unheard."""
    return max(r.cpu_seconds - r.alone_seconds, 0.0) / (events * subscribers) * 1e6


def span(values: list[float], unit: str = "") -> str:
    low, high = min(values), max(values)
    return f"{low:.1f}{unit}" if low == high else f"{low:.1f}-{high:.1f}{unit}"


def summary(goals: list[Goal]) -> bool:
    print("\nissue 11 goal 3 (ranges over the repeats; met when the median ratio is within)")
    print(f"{'measure':<32}{'N':>6}{'weflux':>16}{'floor':>14}{'ratio':>14}{'goal':>8}  ")
    for goal in goals:
        verdict = "ok" if goal.met else "MISSED"
        print(
            f"{goal.what:<32}{goal.subscribers:>6}{span(goal.weflux):>16}{span(goal.floor):>14}"
            f"{span(goal.ratios, 'x'):>14}{f'<={goal.limit}x':>8}  {verdict}"
        )
    return all(goal.met for goal in goals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1, help="runs per subscriber count")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--batch", type=int, default=25, help="sockets opened at once")
    parser.add_argument("--timeout", type=float, default=600, help="each run, seconds")
    parser.add_argument("--profile", default=None, help="cProfile the weflux server to PATH")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, DB)")
    args = parser.parse_args()
    if min(args.subscribers) < 1 or args.events < 1 or args.repeat < 1:
        parser.error("--subscribers, --events and --repeat must be at least 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * max(args.subscribers) + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the servers
    goals: list[Goal] = []
    for n in args.subscribers:
        cpu = Goal("us CPU per event per subscriber", n, CPU_GOAL)
        memory = Goal("KiB per idle subscribed socket", n, MEMORY_GOAL)
        goals += [cpu, memory]
        for _ in range(args.repeat):
            one = argparse.Namespace(**{**vars(args), "subscribers": n})
            on_weflux, on_raw = run_once(one)
            cpu.weflux.append(fan_out_us(on_weflux, args.events, n))
            cpu.floor.append(fan_out_us(on_raw, args.events, n))
            memory.weflux.append(on_weflux.kib_per_socket)
            memory.floor.append(on_raw.kib_per_socket)
    if not summary(goals):
        sys.exit(1)


def run_once(args: argparse.Namespace) -> tuple[Result, Result]:
    workdir = Path(tempfile.mkdtemp(prefix="weflux-fanout-"))

    async def bounded() -> tuple[Result, Result]:
        async with asyncio.timeout(args.timeout):
            return await run(args, workdir)

    try:
        return asyncio.run(bounded())
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
