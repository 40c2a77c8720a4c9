"""The baseline of `bench.fanout`: a raw Starlette WebSocket doing the same fan-out.

    .venv/bin/python -m uvicorn bench.raw_ws_app:app --port 8001 --ws-per-message-deflate false

No GraphQL, no database, no authentication. `/ws` speaks just enough graphql-transport-ws
for the benchmark's client: accept (subprotocol `graphql-transport-ws`), wait for
`connection_init`, answer `connection_ack`, wait for one `subscribe`, then hold the socket
in a module-level set until it closes. `POST /publish` serialises
`{"id": "1", "type": "next", "payload": <the body>}` once and sends that same text to
every registered socket (to none with `?to=nobody`), answering 200 once every send
returned.

With `BENCH_FLOOR_REDIS_URL`, `BENCH_FLOOR_CHANNEL` and `BENCH_FLOOR_DATABASE_URL` set
(`bench.crossprocess`), it is process B of the work-alike floor across processes: one
Redis subscription to the channel that `bench.raw_webhook_app` publishes row ids on; for
each id, one SELECT of the row by id (its own transaction, SQLAlchemy Core), then one
pre-serialised `next` frame (the id and the body's length) sent to every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUBPROTOCOL = "graphql-transport-ws"
ACK = json.dumps({"type": "connection_ack"})
PONG = json.dumps({"type": "pong"})

subscribers: set[WebSocket] = set()


async def _wait_for(websocket: WebSocket, kind: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await websocket.receive_text())
        if isinstance(frame, dict) and frame.get("type") == kind:
            return frame
        if isinstance(frame, dict) and frame.get("type") == "ping":
            await websocket.send_text(PONG)


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=SUBPROTOCOL)
    try:
        await _wait_for(websocket, "connection_init")
        await websocket.send_text(ACK)
        await _wait_for(websocket, "subscribe")
        subscribers.add(websocket)
        while True:  # hold the socket; answer pings until the client goes away
            frame = json.loads(await websocket.receive_text())
            if isinstance(frame, dict) and frame.get("type") == "ping":
                await websocket.send_text(PONG)
    except (WebSocketDisconnect, RuntimeError, ValueError):
        pass
    finally:
        subscribers.discard(websocket)


async def publish(request: Request) -> JSONResponse:
    payload = await request.json()
    text = json.dumps({"id": "1", "type": "next", "payload": payload}, separators=(",", ":"))
    sent = 0
    # `?to=nobody`: the same request and serialisation, sent to no socket (the event
    # nobody hears, which `bench.fanout` takes off the fan-out's CPU).
    targets = [] if request.query_params.get("to") == "nobody" else list(subscribers)
    for websocket in targets:
        try:
            await websocket.send_text(text)
        except Exception:  # a socket that went away meanwhile
            subscribers.discard(websocket)
        else:
            sent += 1
    return JSONResponse({"sent": sent})


async def _send_all(text: str) -> None:
    for websocket in list(subscribers):
        try:
            await websocket.send_text(text)
        except Exception:  # a socket that went away meanwhile
            subscribers.discard(websocket)


async def _relay(redis_url: str, channel: str, database_url: str) -> None:
    """Redis message (a row id) -> one SELECT by id -> one frame to every socket."""
    engine = create_async_engine(database_url)
    select_body = text("SELECT body FROM bench_floor_webhooks WHERE id = :id")
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            row_id = message["data"].decode()
            async with engine.connect() as connection:
                body = (await connection.execute(select_body, {"id": row_id})).scalar()
            if body is None:
                continue
            payload = {"data": {"id": row_id, "bytes": len(body)}}
            await _send_all(json.dumps({"id": "1", "type": "next", "payload": payload}))
    finally:
        await pubsub.aclose()
        await redis.aclose()
        await engine.dispose()


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    channel = os.environ.get("BENCH_FLOOR_CHANNEL")
    relay = None
    if channel:
        relay = asyncio.create_task(
            _relay(
                os.environ["BENCH_FLOOR_REDIS_URL"],
                channel,
                os.environ["BENCH_FLOOR_DATABASE_URL"],
            )
        )
    try:
        yield
    finally:
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay


app = Starlette(
    routes=[
        WebSocketRoute("/ws", ws_endpoint),
        Route("/publish", publish, methods=["POST"]),
    ],
    lifespan=lifespan,
)
