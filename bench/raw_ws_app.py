"""The baseline of `bench.fanout`: a raw Starlette WebSocket doing the same fan-out.

    .venv/bin/python -m uvicorn bench.raw_ws_app:app --port 8001 --ws-per-message-deflate false

No GraphQL, no database, no authentication. `/ws` speaks just enough graphql-transport-ws
for the benchmark's client: accept (subprotocol `graphql-transport-ws`), wait for
`connection_init`, answer `connection_ack`, wait for one `subscribe`, then hold the socket
in a module-level set until it closes. `POST /publish` serialises
`{"id": "1", "type": "next", "payload": <the body>}` once and sends that same text to
every registered socket, answering 200 once every send returned.
"""

from __future__ import annotations

import json
from typing import Any

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
    for websocket in list(subscribers):
        try:
            await websocket.send_text(text)
        except Exception:  # a socket that went away meanwhile
            subscribers.discard(websocket)
        else:
            sent += 1
    return JSONResponse({"sent": sent})


app = Starlette(
    routes=[
        WebSocketRoute("/ws", ws_endpoint),
        Route("/publish", publish, methods=["POST"]),
    ]
)
