"""ASGI middleware: request ids and the access log; request bodies that arrive in time."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weflux.errors import ErrorCode, error_response
from weflux.logs import loggable_target, request_id_var

access_log = logging.getLogger("weflux.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()  # as ASGI hands header names over
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


def request_id_of(scope: Scope) -> str:
    """The request's id: a sane `X-Request-ID` it sent, else a new one."""
    incoming = dict(scope["headers"]).get(_REQUEST_ID_KEY, b"").decode("latin-1")
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def log_access(scope: Scope, status: int | None, started: float) -> None:
    """The access line of a request or a WebSocket (`WS`, no status) once it ended."""
    client = scope.get("client")
    access_log.info(
        "%s %s",
        scope.get("method", "WS"),
        loggable_target(scope["path"]),
        extra={
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "client": client[0] if client else None,
        },
    )


class RequestContextMiddleware:
    """Give every request an id (a sane `X-Request-ID` is kept), echo it, log the request.

    WebSockets get the same id and access line from `weflux.app.WefluxApp`, which routes
    them past the HTTP middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log_access(scope, status, started)
            request_id_var.reset(token)


class BodyTimeoutMiddleware:
    """Answer 408 and close the connection when a request body does not arrive in time.

    uvicorn waits for a declared body as long as the client likes: one that declares
    100 bytes and sends 24 holds its connection (and the app's task) forever. Here the
    whole body must arrive within `timeout` seconds of the app's first read of it; each
    read waits at most what remains, so a stalled body and one dripped a byte at a time
    both end at the deadline. The app then sees a disconnect, and its answer is dropped.

    A response that starts before the body was complete (the app answered without
    reading it: a 401, a 413, a 429) carries `Connection: close`, so uvicorn closes the
    connection instead of waiting for the rest.
    """

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        body_done = headers.get("content-length", "0") == "0" and (
            "transfer-encoding" not in headers
        )
        # HTTP/2 forbids the header (a stream ends on its own); HTTP/1.x needs it.
        close = {"Connection": "close"} if scope.get("http_version", "1.1") < "2" else {}
        deadline: float | None = None
        responded = timed_out = False

        async def receive_in_time() -> Message:
            nonlocal body_done, deadline, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                if not responded:
                    await _request_timeout(close)(scope, receive, send)
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def send_unless_timed_out(message: Message) -> None:
            nonlocal responded
            if timed_out:
                return  # the 408 was the answer
            if message["type"] == "http.response.start":
                responded = True
                if not body_done:
                    MutableHeaders(scope=message).update(close)
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_unless_timed_out)
        except Exception:
            if not timed_out:
                raise
            # The app failed on the disconnect it was given (Starlette's ClientDisconnect):
            # the client has its 408 and nothing is left to report.


def _request_timeout(headers: dict[str, str]) -> Response:
    return error_response(
        408,
        ErrorCode.TIMEOUT,
        "The request body did not arrive in time",
        headers=headers | {"Cache-Control": "no-store"},
    )
