"""The Starlette application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from weflux.api.health import healthz, readyz
from weflux.api.middleware import RequestContextMiddleware
from weflux.config import ConfigError, Settings, load_settings
from weflux.db import Database
from weflux.gql.view import GraphQLApp, deny_all

log = logging.getLogger(__name__)


def create_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


async def _check_database_role(settings: Settings, db: Database) -> None:
    role = await db.role_check()
    if role is None or role.subject_to_rls:
        return
    problem = (
        f"WEFLUX_DATABASE_URL connects as `{role.name}`, a superuser or BYPASSRLS role: "
        "row-level security does not apply to it"
    )
    if settings.is_production:
        raise ConfigError(problem + "; connect as the restricted application role")
    log.warning(problem + "; fine for local development, never in production")


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app; `uvicorn --factory weflux.app:create_app` serves it."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(
            settings.database_url,
            pool_size=settings.database_pool_size,
            connect_timeout=settings.database_connect_timeout,
        )
        redis = create_redis(settings.redis_url) if settings.redis_url else None
        app.state.settings = settings
        app.state.db = db
        app.state.redis = redis
        try:
            await _check_database_role(settings, db)
            yield
        finally:
            if redis is not None:
                await redis.aclose()
            await db.dispose()

    graphql = GraphQLApp(
        authenticator=deny_all, ide=settings.ide_enabled, allowed_origins=settings.origins
    )
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware)],
        lifespan=lifespan,
    )
