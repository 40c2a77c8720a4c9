"""What an idle subscribed socket holds, by the line that allocated it (tracemalloc).

    .venv/bin/python -m bench.socket_memory [--subscribers 200] [--top 25] [--frames 1]
                                            [--owner weflux]

Starts a real `weflux serve --no-worker` (SQLite, the set-up of `bench.fanout`), opens
one socket to warm up and closes it, has the server take a snapshot, opens N sockets
subscribed to `bench.fanout.QUERY` (idle, as in the fan-out's memory line), takes a
second snapshot, and prints the growth per socket grouped by the allocating line, or with
`--owner weflux --frames 30` by the innermost line of weflux that led to it (the rest by
their own line), largest first, with the traced total. The server starts tracing and
takes each snapshot on SIGUSR1, after a `gc.collect()`. Traced bytes are not VmRSS (no
allocator overhead, no freed pages kept): read this for where the memory goes, and
`bench.fanout` for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path

import httpx

from bench.fanout import Clients, Server, prepare, server_env, spawn, wait_ready, weflux_opener
from tests.fixtures.api import login
from tests.fixtures.factories import PASSWORD
from tests.fixtures.live import free_port

# The server: SIGUSR1 writes snapshot <k> to $SNAPSHOTS/<k> (k = 1, 2, ...). Tracing
# starts at the first (a traced start-up is slow, and only the growth matters).
SERVE = (
    "import gc, itertools, os, signal, sys, tracemalloc\n"
    "counter = itertools.count(1)\n"
    "def dump(*_):\n"
    "    gc.collect()\n"
    "    if not tracemalloc.is_tracing():\n"
    "        tracemalloc.start(int(os.environ['FRAMES']))\n"
    "    k = next(counter)\n"
    "    path = os.path.join(os.environ['SNAPSHOTS'], str(k))\n"
    "    tracemalloc.take_snapshot().dump(path + '.part')\n"
    "    os.rename(path + '.part', path)\n"
    "signal.signal(signal.SIGUSR1, dump)\n"
    "from weflux.cli import main\n"
    "sys.argv = sys.argv[1:]\n"
    "main()\n"
)


async def snapshot(server: Server, directory: Path, k: int) -> tracemalloc.Snapshot:
    server.process.send_signal(signal.SIGUSR1)
    path = directory / str(k)
    for _ in range(600):
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no snapshot {k}:\n{server.log_tail()}")


async def run(args: argparse.Namespace, workdir: Path) -> None:
    url = f"sqlite+aiosqlite:///{workdir}/memory.db"
    space = await prepare(url)
    snapshots = workdir / "snapshots"
    snapshots.mkdir()
    env = server_env(url, workdir) | {"SNAPSHOTS": str(snapshots), "FRAMES": str(args.frames)}
    port = free_port()
    argv = [sys.executable, "-c", SERVE]
    argv += ["weflux", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)]
    server = spawn("weflux", argv, env, workdir, port)
    try:

        async def up(client: httpx.AsyncClient) -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_ready(server, up)
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            response = await login(client, space.email, PASSWORD)
            token = response.json()["accessToken"]
        opener = weflux_opener(server.base, token)
        warm = Clients()
        await warm.open(1, 1, opener)
        await asyncio.sleep(0.5)
        await warm.close()
        await asyncio.sleep(0.5)
        before = await snapshot(server, snapshots, 1)
        clients = Clients()
        try:
            await clients.open(args.subscribers, 25, opener)
            await asyncio.sleep(1.0)
            after = await snapshot(server, snapshots, 2)
        finally:
            await clients.close()
    finally:
        server.stop()
    report(args, before, after)


_NOT_OWNERS = ("/cli.py", "/http_protocol.py")


def _owner(frames: tracemalloc.Traceback, package: str) -> str:
    """The innermost frame of `package` that led to an allocation, else its own line.

    The command line's frame (`cli.py`, under every allocation of the server) is not one,
    nor is weflux's subclass of uvicorn's protocols (`http_protocol.py`, under every
    allocation of uvicorn's per connection: until 2026-12-06 it put about 14 KiB of
    uvicorn's state per socket under weflux)."""
    for frame in reversed(frames):  # innermost first
        if f"/{package}/" in frame.filename and not frame.filename.endswith(_NOT_OWNERS):
            return f"{frame.filename.rsplit(f'/{package}/', 1)[1]}:{frame.lineno} ({package})"
    return str(frames[-1])


def report(
    args: argparse.Namespace, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> None:
    n = args.subscribers
    stats = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in stats)
    print(f"traced growth per idle subscribed socket ({n} sockets): {total / n / 1024:.2f} KiB")
    grouped: dict[str, list[int]] = {}
    for stat in stats:
        key = _owner(stat.traceback, args.owner) if args.owner else str(stat.traceback[-1])
        sizes = grouped.setdefault(key, [0, 0])
        sizes[0] += stat.size_diff
        sizes[1] += stat.count_diff
    if args.owner:
        mine = sum(size for key, (size, _) in grouped.items() if key.endswith(f"({args.owner})"))
        print(f"of which reached through {args.owner}/: {mine / n / 1024:.2f} KiB")
    print(f"{'bytes/socket':>12} {'blocks/socket':>13}  where")
    ranked = sorted(grouped.items(), key=lambda item: -abs(item[1][0]))
    for where, (size, count) in ranked[: args.top]:
        print(f"{size / n:>12.0f} {count / n:>13.1f}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    parser.add_argument(
        "--owner",
        default=None,
        help="group by the innermost frame in this package (e.g. weflux; use --frames 30)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weflux-socket-memory-") as workdir:
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
