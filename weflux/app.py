"""The Starlette application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp

from weflux.api import auth as auth_routes
from weflux.api import webhooks as webhook_routes
from weflux.api.client_ip import parse_trusted_proxies
from weflux.api.health import healthz, readyz
from weflux.api.middleware import BodyTimeoutMiddleware, RequestContextMiddleware
from weflux.api.ratelimit import RateLimiter
from weflux.api.security import SecurityHeadersMiddleware, cors_middleware
from weflux.auth import passwords
from weflux.auth.guard import PasswordGuard
from weflux.auth.principal import Authenticator
from weflux.auth.tokens import TokenCodec
from weflux.config import ConfigError, Settings, load_settings
from weflux.db import Database
from weflux.errors import error_response
from weflux.gql.guard import CostBudgets
from weflux.gql.schema import build_schema
from weflux.gql.view import GraphQLApp
from weflux.logs import guard_library_logs
from weflux.mail.mailer import build_mailer
from weflux.migrate import ensure_current_schema
from weflux.realtime.hub import Hub
from weflux.realtime.sockets import SocketRegistry
from weflux.runtime import Runtime

log = logging.getLogger(__name__)


async def _check_database_role(settings: Settings, db: Database) -> None:
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


class WefluxApp(Starlette):
    """Starlette with request ids and security headers outermost, so that even the
    500 answers of Starlette's error middleware (and the 408 of a late body) carry them."""

    def __init__(self, *args: Any, hsts: bool, body_timeout: float, **kwargs: Any) -> None:
        self.hsts = hsts
        self.body_timeout = body_timeout
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        stack = BodyTimeoutMiddleware(super().build_middleware_stack(), timeout=self.body_timeout)
        return RequestContextMiddleware(SecurityHeadersMiddleware(stack, hsts=self.hsts))


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers in our error format, never cached."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "BAD_REQUEST")
    headers = dict(exc.headers or {}) | {"Cache-Control": "no-store"}
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; `uvicorn --factory weflux.app:create_app` serves it."""
    settings = settings or load_settings()
    assert settings.jwt_secret is not None  # load_settings guarantees it
    # However the app is served (`weflux serve`, `uvicorn --factory`, a test server),
    # uvicorn's lines never carry a query string or a WebSocket frame.
    guard_library_logs()
    codec = TokenCodec(
        settings.jwt_secret.get_secret_value(),
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
        session_max_age=settings.session_max_age,
    )
    trusted_proxies = parse_trusted_proxies(settings.trusted_proxies)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        authenticator = Authenticator(codec, runtime.db, runtime.broker)
        limiter = RateLimiter(settings)
        cost_budgets = CostBudgets(settings)
        state = app.state
        state.runtime, state.settings, state.db = runtime, settings, runtime.db
        state.redis, state.broker = runtime.redis, runtime.broker
        state.keyring, state.cloud_api = runtime.keyring, runtime.cloud_api
        state.codec, state.authenticator, state.limiter = codec, authenticator, limiter
        state.password_guard = PasswordGuard(limiter)
        state.mailer = build_mailer(settings)
        passwords.configure_pool(settings.password_hashing_workers, settings.password_hashing_queue)
        state.cost_budgets = cost_budgets
        state.trusted_proxies = trusted_proxies
        state.hub = Hub(runtime.broker)
        state.sockets = SocketRegistry(authenticator)
        try:
            await _check_database_role(settings, runtime.db)
            await ensure_current_schema(runtime.db.engine, strict=settings.is_production)
            await passwords.warm_up()
            await runtime.start(worker=settings.in_process_worker)
            await authenticator.start()
            await state.hub.start()
            yield
        finally:
            await state.hub.stop()
            await authenticator.stop()
            await limiter.close()
            await cost_budgets.close()
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
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
    ]
    return WefluxApp(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        middleware=[cors_middleware(settings.origins, settings.cors_allow_headers)],
        lifespan=lifespan,
        hsts=settings.is_production,
        body_timeout=settings.request_body_timeout.total_seconds(),
    )
