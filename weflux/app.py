"""The Starlette application."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weflux.api import auth as auth_routes
from weflux.api import disclosure
from weflux.api import exports as export_routes
from weflux.api import media as media_routes
from weflux.api import webhooks as webhook_routes
from weflux.api.health import healthz, readyz
from weflux.api.middleware import (
    BodyTimeoutMiddleware,
    RequestContextMiddleware,
    log_access,
    request_id_of,
)
from weflux.api.security import (
    HSTS_HEADER,
    SecurityHeadersMiddleware,
    cors_middleware,
    refusal_headers,
)
from weflux.auth import passwords
from weflux.client_ip import parse_trusted_proxies
from weflux.config import ConfigError, Settings, load_settings
from weflux.db import Database
from weflux.db_errors import MESSAGE as OUTAGE_MESSAGE
from weflux.db_errors import RETRY_AFTER as OUTAGE_RETRY_AFTER
from weflux.db_errors import is_service_outage
from weflux.errors import ErrorCode, error_response
from weflux.gql.errors import MASKED_MESSAGE
from weflux.gql.schema import build_schema
from weflux.gql.view import GraphQLApp
from weflux.logs import configure_logging_unless_done, guard_library_logs, request_id_var
from weflux.migrate import ensure_current_schema
from weflux.runtime import Runtime
from weflux.sandbox import page as sandbox_page

log = logging.getLogger(__name__)


async def check_database_role(settings: Settings, db: Database) -> None:
    """Production refuses a database role that row-level security does not hold;
    development warns."""
    role = await db.role_check()
    if role is None or role.subject_to_rls:
        return
    problem = (
        f"WEFLUX_DATABASE_URL connects as `{role.name}`, a superuser, BYPASSRLS role or "
        "the owner of the tables: row-level security does not apply to it"
    )
    if settings.is_production:
        raise ConfigError(problem + "; connect as the restricted application role")
    log.warning(problem + "; fine for local development, never in production")


_REFUSED_STATUS = "weflux.refused_status"  # the HTTP status a refused handshake answered


class WefluxApp(Starlette):
    """Starlette with request ids, security headers and CORS outermost, so that even the
    500 and 503 answers of Starlette's error middleware (and the 408 of a late body)
    carry them: without CORS a browser reads such an answer as a network error, never
    its status, code or `Retry-After`.

    A WebSocket is routed past the middleware: its layers act on HTTP responses only
    (security headers, body timeout, error pages, CORS; Starlette's exception handlers
    would close a socket on a `WebSocketException`, which nothing on the socket's path
    raises), yet each would stay on the socket's stack for its whole life (about 4 KiB
    per idle socket). The socket gets what applies to it here: its request id (in
    the logs) and access line, the router's match. Its origin is checked by the GraphQL
    view (`allowed_origins`). A path no WebSocket route matches takes the full stack,
    whose router refuses it as before.
    """

    def __init__(
        self, *args: Any, hsts: bool, body_timeout: float, cors: Middleware, **kwargs: Any
    ) -> None:
        self.hsts = hsts
        self.body_timeout = body_timeout
        self.cors = cors
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        stack = BodyTimeoutMiddleware(super().build_middleware_stack(), timeout=self.body_timeout)
        cls, args, kwargs = self.cors
        return RequestContextMiddleware(
            SecurityHeadersMiddleware(cls(stack, *args, **kwargs), hsts=self.hsts)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for route in self.router.routes:
                if not isinstance(route, WebSocketRoute):
                    continue
                match, child = route.matches(scope)
                if match is not Match.FULL:
                    continue
                # What Starlette and the request middleware do for a socket, in this one
                # frame (a coroutine of its own was about 0.3 KiB more per idle socket).
                scope["app"] = self
                scope.setdefault("router", self.router)
                scope["route"] = route
                scope.update(child)
                token = request_id_var.set(request_id_of(scope))
                started = time.perf_counter()
                try:
                    await route.app(scope, receive, _socket_send(scope, send, hsts=self.hsts))
                finally:
                    # a handshake answered with an HTTP status (refused) logs it; a socket, none
                    log_access(scope, scope.get(_REFUSED_STATUS), started)
                    request_id_var.reset(token)
                return
        await super().__call__(scope, receive, send)


def _socket_send(scope: Scope, send: Send, *, hsts: bool) -> Send:
    """`send`, with a handshake refused before `websocket.accept` (a foreign origin, a
    wrong subprotocol) answered as a 403 carrying the security headers (HSTS too where
    HTTP answers carry it), where the server speaks ASGI's WebSocket Denial Response;
    the server's own 403 has none. A refusal the app answers itself (429) gets them too.
    The accept (101) carries HSTS where HTTP answers do; frames after it pass untouched."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        return send
    return _RefusingWithHeaders(scope, send, hsts or scope.get("scheme") == "wss")


class _RefusingWithHeaders:
    """The `send` of `_socket_send`: an object of four slots, held by the socket for its
    life (a closure and its cells were about 0.4 KiB). `__wrapped__` is the server's
    own `send` (the shared fan-out writes frames to it directly)."""

    __slots__ = ("__wrapped__", "accepted", "hsts", "scope")

    def __init__(self, scope: Scope, send: Send, hsts: bool) -> None:
        self.scope = scope
        self.__wrapped__ = send
        self.hsts = hsts
        self.accepted = False

    async def __call__(self, message: Message) -> None:
        send = self.__wrapped__
        if self.accepted:
            await send(message)
            return
        if message["type"] == "websocket.http.response.start":
            # the app's own refusal (a handshake over its IP's rate or caps: 429)
            self.accepted = True
            self.scope[_REFUSED_STATUS] = message["status"]
            headers = [*message.get("headers", ()), *refusal_headers(hsts=self.hsts)]
            await send({**message, "headers": headers})
            return
        if message["type"] != "websocket.close":
            if message["type"] == "websocket.accept" and self.hsts:
                message = {**message, "headers": [*message.get("headers", ()), HSTS_HEADER]}
            self.accepted = message["type"] == "websocket.accept"
            await send(message)
            return
        self.accepted = True  # answered: anything later goes to the server as it is
        self.scope[_REFUSED_STATUS] = 403
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [*refusal_headers(hsts=self.hsts), (b"content-length", b"0")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b""})


_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}
_NO_STORE = {"Cache-Control": "no-store"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers in our error format, never cached."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
    headers = dict(exc.headers or {}) | {"Cache-Control": "no-store"}
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: 500 with no detail, in the route's own error shape
    (Starlette's error middleware still re-raises it, so it is logged with its trace).
    A dependency's outage (`weflux.db_errors`) is 503 with `Retry-After` instead."""
    outage = is_service_outage(exc)
    status, code = (
        (503, ErrorCode.UPSTREAM_UNAVAILABLE) if outage else (500, ErrorCode.INTERNAL_SERVER_ERROR)
    )
    message = OUTAGE_MESSAGE if outage else MASKED_MESSAGE
    headers = {**_NO_STORE, "Retry-After": str(OUTAGE_RETRY_AFTER)} if outage else _NO_STORE
    if request.url.path.startswith("/webhooks/"):
        # Meta's servers read the status only (and retry a 503): plain text.
        return PlainTextResponse(message, status_code=status, headers=headers)
    if request.url.path == "/graphql":
        extensions: dict[str, object] = {"code": code}
        if outage:
            extensions["retryAfter"] = OUTAGE_RETRY_AFTER
        error = {"message": message, "extensions": extensions}
        return JSONResponse({"errors": [error]}, status_code=status, headers=headers)
    return error_response(status, code, message, headers=headers)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; `uvicorn --factory weflux.app:create_app` serves it.

    Without `settings` (the factory's call) they are read from the environment, and the
    process's logging is set up from them unless it was already (`weflux serve` did it):
    under a bare `uvicorn --factory` the format, levels and redaction filters then hold too.
    """
    if settings is None:
        settings = load_settings(configure_logging_unless_done)
    # However the app is served (`weflux serve`, `uvicorn --factory`, a test server),
    # uvicorn's lines never carry a query string or a WebSocket frame.
    guard_library_logs()
    # Checked here as well as by the runtime: a wrong WEFLUX_TRUSTED_PROXIES stops
    # `weflux serve` as a configuration error before uvicorn starts the lifespan.
    parse_trusted_proxies(settings.trusted_proxies)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime.build(settings)
        app.state.runtime = runtime  # the one thing on the app's state: `runtime_of`
        if runtime.sandbox is not None:
            runtime.sandbox.attach(app)  # sandbox statuses come in through this app's intake
        passwords.configure_pool(settings.password_hashing_workers, settings.password_hashing_queue)
        try:
            await check_database_role(settings, runtime.db)
            await ensure_current_schema(runtime.db.engine, strict=settings.is_production)
            await passwords.warm_up()
            await runtime.start(serve=True, worker=settings.in_process_worker)
            yield
        finally:
            await runtime.stop()

    graphql = GraphQLApp(
        build_schema(introspection=settings.graphql_introspection),
        ide=settings.ide_enabled,
        allowed_origins=settings.origins,
    )
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *auth_routes.routes,
        *webhook_routes.routes,
        *disclosure.routes,
        *export_routes.routes,
        *media_routes.routes,
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
    ]
    if settings.env == "development":
        routes += sandbox_page.routes  # unauthenticated dev tools; 404 without a sandbox
    return WefluxApp(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        cors=cors_middleware(settings.origins, settings.cors_allow_headers),
        lifespan=lifespan,
        hsts=settings.is_production,
        body_timeout=settings.request_body_timeout.total_seconds(),
    )
