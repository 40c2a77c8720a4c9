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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
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
    receive: Receive, send: Send, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    await receive()  # lifespan.startup
    try:
        await start()
    except Exception as error:  # noqa: BLE001  (uvicorn reports it and exits)
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
    state["redis"] = Redis.from_url(os.environ["BENCH_FLOOR_REDIS_URL"], single_connection_client=True)


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
                except Exception:  # noqa: BLE001  (a socket that went away meanwhile)
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
