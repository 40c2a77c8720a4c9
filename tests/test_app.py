"""The app's own routing of WebSockets past the HTTP middleware (`weflux.app.WefluxApp`)."""

from __future__ import annotations

import asyncio
import json
from types import CoroutineType
from typing import Any

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.exceptions import InvalidStatus

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor
from tests.fixtures.logs import capture_logs
from tests.fixtures.ws import GraphQLSocket
from weflux.gql.errors import MASKED_MESSAGE
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
    served = [stack for stack in stacks if "GraphQLApp._socket" in stack]
    await socket.close()
    # Then it goes from the app straight to the GraphQL view, past every HTTP layer
    assert len(served) == 1, stacks
    stack = served[0][served[0].index("WefluxApp.__call__") :]
    assert stack[:2] == ["WefluxApp.__call__", "GraphQLApp._socket"]
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


async def _fails(request: Request) -> Response:
    raise RuntimeError("a fault of ours")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/auth/boom", {"error": {"code": "INTERNAL_SERVER_ERROR", "message": MASKED_MESSAGE}}),
        (
            "/graphql",
            {
                "errors": [
                    {"message": MASKED_MESSAGE, "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
                ]
            },
        ),
    ],
)
async def test_an_unexpected_failure_is_a_500_in_the_routes_error_shape(
    app: Starlette, path: str, expected: dict[str, Any]
) -> None:
    """Given a route that fails unexpectedly, then the answer is 500 in the API's error
    shape (GraphQL's on /graphql), without a detail, never cached; the webhooks', which
    only Meta's servers read, stays plain text."""
    app.router.routes.insert(0, Route(path, _fails, methods=["POST"]))
    app.router.routes.insert(0, Route("/webhooks/boom", _fails, methods=["POST"]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(path)
        webhook = await client.post("/webhooks/boom")
    assert response.status_code == 500
    assert response.json() == expected
    assert response.headers["cache-control"] == "no-store"
    assert "a fault of ours" not in response.text
    assert webhook.status_code == 500
    assert webhook.headers["content-type"].startswith("text/plain")
