"""The barest floor of `bench.crossprocess`: the least code that does goal 4's work.

    BENCH_FLOOR_DATABASE_URL=postgresql://... BENCH_FLOOR_SECRET=... \
    BENCH_FLOOR_REDIS_URL=redis://... BENCH_FLOOR_CHANNEL=... \
        .venv/bin/python -m uvicorn bench.bare_floor:webhook_app --lifespan on --port 8003
        .venv/bin/python -m uvicorn bench.bare_floor:socket_app --lifespan on --port 8004

Two raw ASGI callables (no Starlette, no SQLAlchemy), run by `bench.crossprocess` under
the same uvicorn options as the work-alike floor (`bench.raw_webhook_app`,
`bench.raw_ws_app`), on the same table and channel shape:

- `webhook_app`, process A: any POST is the webhook. It reads the body, checks
  `X-Hub-Signature-256` (HMAC-SHA256 of the raw bytes, constant time), runs one INSERT of
  the body (a prepared statement on one persistent asyncpg connection, outside any
  explicit transaction: PostgreSQL commits it before answering, with `synchronous_commit`
  as the database has it, so the row is durable before the 200), PUBLISHes the row's id
  and answers 200 with the id. Any GET answers 200 (readiness).
- `socket_app`, process B: `/` (any path) speaks just enough graphql-transport-ws for the
  bench's client (accept with the subprotocol, `connection_ack` on `connection_init`,
  `pong` on `ping`, the socket registered on `subscribe`). Its lifespan holds one Redis
  subscription to the channel and one asyncpg connection with a prepared SELECT by id;
  each id received is read, and one frame, `{"id":"1","type":"next","payload":{"data":
  {"id":..., "bytes":...}}}` built by concatenation, is sent to every registered socket.

One connection serves every request (a lock orders them): the floor of one sequential
client, not a server. The table (`bench_floor_webhooks`) is `bench.webhook`'s.

Run as a module, it measures the terms of goal 4's budget on their own, one round trip
after another from this process (p50 and p99, ms):

    .venv/bin/python -m bench.bare_floor [--database-url URL] [--redis-url URL] [--rounds 500]

`SELECT 1` (a PostgreSQL round trip), the prepared INSERT as A runs it (a durable commit,
`synchronous_commit` as the server has it), the same with `synchronous_commit = off` (the
round trip and the insert, no WAL flush: the difference is the flush), the prepared
SELECT by id as B runs it, and one Redis PUBLISH -> receive (issue 11's floor). The
INSERTs go to a table of their own in that database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from redis.asyncio import Redis

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SECRET = os.environ.get("BENCH_FLOOR_SECRET", "").encode()
CHANNEL = os.environ.get("BENCH_FLOOR_CHANNEL", "")
SUBPROTOCOL = "graphql-transport-ws"
ACK = {"type": "websocket.send", "text": '{"type":"connection_ack"}'}
PONG = {"type": "websocket.send", "text": '{"type":"pong"}'}
HEADERS = [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")]

state: dict[str, Any] = {}  # the connections and statements, made at startup
sockets: set[Send] = set()  # B's subscribed sockets, by their ASGI `send`


async def _connect() -> asyncpg.Connection:
    url = os.environ["BENCH_FLOOR_DATABASE_URL"]
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))


async def _lifespan(
    receive: Receive,
    send: Send,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> None:
    await receive()  # lifespan.startup
    try:
        await start()
    except Exception as error:  # uvicorn reports it and exits
        await send({"type": "lifespan.startup.failed", "message": repr(error)})
        return
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await stop()
    await send({"type": "lifespan.shutdown.complete"})


async def _answer(send: Send, status: int, body: bytes) -> None:
    length = (b"content-length", str(len(body)).encode())  # else uvicorn chunks the body
    await send({"type": "http.response.start", "status": status, "headers": [*HEADERS, length]})
    await send({"type": "http.response.body", "body": body})


# --- process A ------------------------------------------------------------------------


async def _start_a() -> None:
    connection = await _connect()
    state["db"] = connection
    state["insert"] = await connection.prepare(
        "INSERT INTO bench_floor_webhooks (id, body) VALUES ($1, $2)"
    )
    state["lock"] = asyncio.Lock()
    state["redis"] = Redis.from_url(
        os.environ["BENCH_FLOOR_REDIS_URL"], single_connection_client=True
    )


async def _stop_a() -> None:
    await state["redis"].aclose()
    await state["db"].close()


async def webhook_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Process A: verify, store durably, publish the id, 200."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send, _start_a, _stop_a)
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] != "POST":
        return await _answer(send, 200, b"OK")
    signature = next((v for k, v in scope["headers"] if k == b"x-hub-signature-256"), b"")
    expected = b"sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, signature):
        return await _answer(send, 401, b"Invalid signature")
    row_id = str(uuid.uuid4())
    async with state["lock"]:
        await state["insert"].fetchval(row_id, body)  # committed (durable) when it returns
    await state["redis"].publish(CHANNEL, row_id)
    await _answer(send, 200, row_id.encode())


# --- process B ------------------------------------------------------------------------


async def _relay(select: asyncpg.prepared_stmt.PreparedStatement) -> None:
    """Redis message (a row id) -> one SELECT by id -> one frame to every socket."""
    pubsub = state["redis"].pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    try:
        async for message in pubsub.listen():
            row_id = message["data"].decode()
            body = await select.fetchval(row_id)
            if body is None:
                continue
            text = (
                f'{{"id":"1","type":"next","payload":{{"data":{{"id":"{row_id}",'
                f'"bytes":{len(body)}}}}}}}'
            )
            for socket in list(sockets):
                try:
                    await socket({"type": "websocket.send", "text": text})
                except Exception:  # a socket that went away meanwhile
                    sockets.discard(socket)
    finally:
        await pubsub.aclose()


async def _start_b() -> None:
    connection = await _connect()
    state["db"] = connection
    state["redis"] = Redis.from_url(os.environ["BENCH_FLOOR_REDIS_URL"])
    select = await connection.prepare("SELECT body FROM bench_floor_webhooks WHERE id = $1")
    state["relay"] = asyncio.create_task(_relay(select))


async def _stop_b() -> None:
    state["relay"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await state["relay"]
    await state["redis"].aclose()
    await state["db"].close()


async def socket_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Process B's socket: handshake, then registered until it closes."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send, _start_b, _stop_b)
    if scope["type"] != "websocket":
        return await _answer(send, 404, b"Not Found")
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
    try:
        while (message := await receive())["type"] == "websocket.receive":
            try:
                frame = json.loads(message.get("text") or message.get("bytes") or b"")
                kind = frame["type"]
            except (ValueError, TypeError, KeyError):  # not a graphql-transport-ws message
                await send({"type": "websocket.close", "code": 4400})
                return
            if kind == "connection_init":
                await send(ACK)
            elif kind == "ping":
                await send(PONG)
            elif kind == "subscribe":
                sockets.add(send)
    finally:
        sockets.discard(send)


# --- the budget's terms, measured alone -----------------------------------------------


async def _timed(rounds: int, one: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    """p50 and p99 of `rounds` sequential calls, in ms (after 20 unmeasured)."""
    for k in range(20):
        await one(-1 - k)
    samples = []
    for k in range(rounds):
        started = time.perf_counter()
        await one(k)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[
        min(len(samples) - 1, round(0.99 * (len(samples) - 1)))
    ]


async def budget(database_url: str, redis_url: str, rounds: int) -> list[tuple[str, float, float]]:
    connection = await asyncpg.connect(
        database_url.replace("postgresql+asyncpg://", "postgresql://")
    )
    table = f"bench_bare_commits_{secrets.token_hex(4)}"
    rows: list[tuple[str, float, float]] = []
    try:
        await connection.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, body bytea NOT NULL)")
        body = b"x" * 470  # about a one-message webhook
        insert = await connection.prepare(f"INSERT INTO {table} (id, body) VALUES ($1, $2)")  # noqa: S608
        select = await connection.prepare(f"SELECT body FROM {table} WHERE id = $1")  # noqa: S608
        setting = await connection.fetchval("SHOW synchronous_commit")
        rows.append(
            (
                "PostgreSQL: SELECT 1",
                *await _timed(rounds, lambda _k: connection.fetchval("SELECT 1")),
            )
        )
        ids = iter(str(uuid.uuid4()) for _ in range(4 * rounds + 100))
        rows.append(
            (
                f"INSERT, commit (synchronous_commit={setting})",
                *await _timed(rounds, lambda _k: insert.fetchval(next(ids), body)),
            )
        )
        await connection.execute("SET synchronous_commit = off")
        rows.append(
            (
                "INSERT, commit (synchronous_commit=off)",
                *await _timed(rounds, lambda _k: insert.fetchval(next(ids), body)),
            )
        )
        known = await connection.fetchval(f"SELECT id FROM {table} LIMIT 1")  # noqa: S608
        rows.append(("SELECT body by id", *await _timed(rounds, lambda _k: select.fetchval(known))))
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    channel = f"weflux:bench:budget:{secrets.token_hex(6)}"
    await pubsub.subscribe(channel)

    async def hop(_k: int) -> None:
        await redis.publish(channel, "x")
        while await pubsub.get_message(timeout=5.0) is None:
            pass

    try:
        rows.append(("Redis: PUBLISH -> receive", *await _timed(rounds, hop)))
    finally:
        await pubsub.aclose()
        await redis.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="goal 4's budget, term by term")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    rows = asyncio.run(budget(args.database_url, args.redis_url, args.rounds))
    print(f"{args.rounds} sequential round trips each")
    print(f"{'':<44}{'p50 ms':>10}{'p99 ms':>10}")
    for name, p50, p99 in rows:
        print(f"{name:<44}{p50:>10.3f}{p99:>10.3f}")


if __name__ == "__main__":
    main()
