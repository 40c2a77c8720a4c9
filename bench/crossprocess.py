"""End to end across processes: a webhook on process A reaches a subscriber on process B.

    .venv/bin/python -m bench.crossprocess [--events 100] [--gap 0.05]

Two `weflux serve --no-worker` processes share a fresh PostgreSQL database (a clone of a
migrated template, dropped afterwards) and Redis. One socket on B (an Admin) subscribes
to `messageAdded`; each sample is one signed one-message webhook POSTed to A, timed from
just before the POST to the `next` frame on B. The floor, in the same run and
interleaved sample by sample: a Redis PUBLISH from this process to a subscriber in this
process (the broker hop alone). Prints p50 and p99 of both with their ratios against
issue 11's goal 4 (p50 <= 5x, p99 <= 10x) and exits 1 when one is missed. To tell where
the time goes, also: the POST's answer from A, and when A's `messageAdded` event passed
through Redis (this process listens on the workspace's channel too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bench.fanout import (
    QUERY,
    Server,
    Workspace,
    loopback,
    prepare,
    server_env,
    spawn,
    wait_ready,
    webhook,
)
from tests.fixtures.api import login
from tests.fixtures.databases import PostgresTemplate
from tests.fixtures.factories import PASSWORD
from tests.fixtures.live import free_port
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.ws import GraphQLSocket
from weflux.realtime.events import workspace_channel

P50_GOAL = 5.0
P99_GOAL = 10.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def floor_sample(redis: Redis, channel: str, pubsub: object) -> float:
    """One PUBLISH -> receive over Redis, in ms."""
    started = time.perf_counter()
    await redis.publish(channel, "x")
    while time.perf_counter() - started < 5.0:
        # None also for an ignored (subscribe) message: read on until the deadline
        message = await pubsub.get_message(timeout=5.0)  # type: ignore[attr-defined]
        if message is not None and message.get("type") == "message":
            return (time.perf_counter() - started) * 1000
    raise RuntimeError("the floor's message did not arrive")


async def measure(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[float], list[float], list[float], list[float]]:
    template = PostgresTemplate()
    await template.build()
    urls = await template.clone()
    servers: list[Server] = []
    try:
        space = await prepare(urls.owner)
        env = server_env(urls.app, workdir) | {"WEFLUX_REDIS_URL": TEST_REDIS_URL}
        for name in ("a", "b"):
            port = free_port()
            argv = [sys.executable, "-m", "weflux", "serve", "--no-worker", *loopback(port)]
            servers.append(spawn(name, argv, env, workdir, port))

        async def up(client: httpx.AsyncClient) -> bool:
            return (await client.get("/readyz")).status_code == 200

        await asyncio.gather(*(wait_ready(server, up) for server in servers))
        try:
            return await samples(args, space, *servers)
        except BaseException:
            for server in servers:
                print(f"--- {server.name} log (tail)\n{server.log_tail()}", file=sys.stderr)
            raise
    finally:
        for server in servers:
            server.stop()
        await template.drop(urls)
        with contextlib.suppress(Exception):
            template.destroy()  # the template (blocks briefly, in a thread of its own)


async def samples(
    args: argparse.Namespace, space: Workspace, a: Server, b: Server
) -> tuple[list[float], list[float], list[float], list[float]]:
    redis = Redis.from_url(TEST_REDIS_URL)
    channel = f"weflux:bench:floor:{secrets.token_hex(6)}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    weflux_ms: list[float] = []
    ack_ms: list[float] = []
    floor_ms: list[float] = []
    published_ms: list[float] = []
    # Where the time goes: when A's messageAdded event passes through Redis.
    events = redis.pubsub(ignore_subscribe_messages=True)
    await events.subscribe(workspace_channel(space.org_id))
    passed: list[float] = []

    async def watch() -> None:
        async for message in events.listen():
            if message.get("type") == "message" and b'"messageAdded"' in message["data"]:
                passed.append(time.perf_counter())

    watcher = asyncio.create_task(watch())
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=30) as to_a,
        httpx.AsyncClient(base_url=b.base, timeout=30) as to_b,
    ):
        response = await login(to_b, space.email, PASSWORD)
        assert response.status_code == 200, response.text
        socket = await GraphQLSocket.connect(b.base, response.json()["accessToken"])
        operation = await socket.subscribe(QUERY)

        async def one(k: int) -> tuple[float, float, float]:
            body, headers = webhook(space, f"1{k:010d}", f"cross {k}")
            passed.clear()
            started = time.perf_counter()
            answer = await to_a.post("/webhooks/whatsapp", content=body, headers=headers)
            acked = time.perf_counter()
            assert answer.status_code == 200, answer.text
            frame = await socket.next(operation, timeout=30)
            assert frame["type"] == "next", frame
            assert frame["payload"]["data"]["messageAdded"]["text"] == f"cross {k}", frame
            done = time.perf_counter()
            published = passed[0] if passed else done
            return (done - started) * 1000, (acked - started) * 1000, (published - started) * 1000

        for k in range(args.warmup):  # B listening, both processes warm
            await one(k)
        for k in range(args.warmup, args.warmup + args.events):
            end_to_end, ack, published = await one(k)
            weflux_ms.append(end_to_end)
            ack_ms.append(ack)
            published_ms.append(published)
            floor_ms.append(await floor_sample(redis, channel, pubsub))
            await asyncio.sleep(args.gap)
        await socket.close()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await events.aclose()
    await pubsub.aclose()
    await redis.aclose()
    return weflux_ms, floor_ms, ack_ms, published_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-crossprocess-"))
    try:
        weflux_ms, floor_ms, ack_ms, published_ms = asyncio.run(measure(args, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"across processes: {args.events} one-message webhooks, A -> Redis -> B, PostgreSQL")
    print(f"{'':<34}{'p50 ms':>10}{'p99 ms':>10}")
    rows = (
        ("weflux webhook on A -> frame on B", weflux_ms),
        ("floor: Redis publish -> receive", floor_ms),
        ("  of which: POST -> A's 200", ack_ms),
        ("  of which: POST -> event on Redis", published_ms),
        (
            "  of which: event on Redis -> B's frame",
            [w - p for w, p in zip(weflux_ms, published_ms, strict=True)],
        ),
    )
    for name, values in rows:
        print(f"{name:<34}{percentile(values, 0.5):>10.2f}{percentile(values, 0.99):>10.2f}")
    met = True
    for label, q, goal in (("p50", 0.5, P50_GOAL), ("p99", 0.99, P99_GOAL)):
        ratio = percentile(weflux_ms, q) / percentile(floor_ms, q)
        ok = ratio <= goal
        met = met and ok
        print(f"{label} ratio {ratio:.1f}x (goal <= {goal:.0f}x) {'ok' if ok else 'MISSED'}")
    print(
        f"(mean weflux {statistics.mean(weflux_ms):.2f} ms, floor {statistics.mean(floor_ms):.2f})"
    )
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
