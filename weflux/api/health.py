"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from weflux.runtime import runtime_of

log = logging.getLogger(__name__)

READINESS_TIMEOUT = 3.0


async def healthz(request: Request) -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The database (and Redis, when configured) answer; 503 otherwise."""
    runtime = runtime_of(request)
    checks: dict[str, str] = {}
    try:
        await runtime.db.ping(within=READINESS_TIMEOUT)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        log.warning("database not ready", extra={"error": type(exc).__name__})
        checks["database"] = "unavailable"
    redis = runtime.redis
    if redis is not None:
        try:
            async with asyncio.timeout(READINESS_TIMEOUT):
                await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            log.warning("redis not ready", extra={"error": type(exc).__name__})
            checks["redis"] = "unavailable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
