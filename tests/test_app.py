"""The app's own routing of WebSockets past the HTTP middleware (`weflux.app.WefluxApp`)."""

from __future__ import annotations

import asyncio
import json
from types import CoroutineType
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor
from tests.fixtures.logs import capture_logs
from tests.fixtures.ws import GraphQLSocket
from weflux.logs import RequestIdFilter

pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])  # routing, not storage

# What acts on HTTP responses only, and so has no business on a socket's stack.
HTTP_ONLY = (
    "RequestContextMiddleware",
    "SecurityHeadersMiddleware",
    "BodyTimeoutMiddleware",
    "ServerErrorMiddleware",
    "CORSMiddleware",
    "ExceptionMiddleware",
    "wrap_app_handling_exceptions",
    "Router",
)


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines a task's stack holds, outermost first."""
    names = []
    coroutine: Any = task.get_coro()
    while isinstance(coroutine, CoroutineType):
        names.append(coroutine.cr_code.co_qualname)
        coroutine = coroutine.cr_await
    return names


async def test_a_socket_holds_none_of_the_http_middleware(
    live: str, http: httpx.AsyncClient, admin: Actor
) -> None:
    # Given an open, authenticated socket served in this process
    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    await socket.ping()
    # When its server task's stack is read
    stacks = [_awaiting(task) for task in asyncio.all_tasks()]
    served = [stack for stack in stacks if "GraphQLApp.__call__" in stack]
    await socket.close()
    # Then it goes from the app straight to the GraphQL view, past every HTTP layer
    assert len(served) == 1, stacks
    stack = served[0][served[0].index("WefluxApp.__call__") :]
    assert stack[:3] == ["WefluxApp.__call__", "WefluxApp._socket", "GraphQLApp.__call__"]
    assert not [name for name in stack if name.split(".")[0] in HTTP_ONLY], stack


async def test_a_socket_keeps_its_request_id_and_access_line(
    live: str, http: httpx.AsyncClient, admin: Actor
) -> None:
    token = await token_for(http, admin)
    with capture_logs() as logs:
        logs.addFilter(RequestIdFilter())  # as `configure_logging` sets on its handlers
        # Given a socket that sends its own X-Request-ID
        connection = await websockets.connect(
            live.replace("http://", "ws://") + "/graphql",
            subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
            additional_headers={"X-Request-ID": "socket-req-12345678"},
        )
        payload = {"authorization": f"Bearer {token}"}
        await connection.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await connection.recv())["type"] == "connection_ack"
        # When it closes
        await connection.close()
        for _ in range(100):
            if '"msg": "WS /graphql"' in logs.text:
                break
            await asyncio.sleep(0.02)
    # Then its access line carries that id, as an HTTP request's does
    lines = [json.loads(line) for line in logs.lines]
    access = [line for line in lines if line["msg"] == "WS /graphql"]
    assert len(access) == 1, lines
    assert access[0]["request_id"] == "socket-req-12345678"
    assert access[0]["logger"] == "weflux.access"


async def test_a_socket_on_another_path_is_still_refused(live: str) -> None:
    # A path with no WebSocket route takes the full stack, whose router refuses it
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(live.replace("http://", "ws://") + "/healthz")
    assert refused.value.response.status_code == 403
