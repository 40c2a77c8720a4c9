"""Which failures are an outage of a service we depend on, not our own fault.

PostgreSQL refusing connections, resetting or killing them (a restart, a failover,
`pg_terminate_backend`), out of connection slots, or silent past the answer timeout
(`weflux.db`), and the pool's wait for a connection running out, are 503
`UPSTREAM_UNAVAILABLE` with `Retry-After` over HTTP, and that code with
`extensions.retryAfter` in GraphQL; nothing of the driver's message, SQL or host is
shown. A network error or timeout of another client (Redis) found on the way counts too.
SQLite's "database is locked" is contention inside the process, not an outage: it
stays a masked 500 like any other error of ours.
"""

from __future__ import annotations

import errno
import socket
import sys

import asyncpg.exceptions as pg
from sqlalchemy import exc as sa_exc

# Seconds a client waits before trying again: a restart or failover takes a few.
RETRY_AFTER = 5
MESSAGE = "A service this request needs is unavailable; try again later"

_DRIVER_OUTAGES = (
    pg.PostgresConnectionError,  # class 08: refused, reset, closed mid-operation
    pg.CannotConnectNowError,  # 57P03: starting up or shutting down
    pg.AdminShutdownError,  # 57P01: the server stopped, or the backend was terminated
    pg.CrashShutdownError,  # 57P02
    pg.TooManyConnectionsError,  # 53300: no connection slot left
    ConnectionError,  # refused or reset at the socket
    TimeoutError,  # no answer within the bound (asyncpg's command timeout, a connect)
    socket.gaierror,  # the server's name does not resolve (DNS away, a failover's record)
)
# What a connect raises as a bare OSError when the network has no way to the server
# (not a ConnectionError): a file's OSError (ENOENT, EACCES) stays ours.
_UNREACHABLE = frozenset(
    (errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ETIMEDOUT)
)


def _redis_outages() -> tuple[type[BaseException], ...]:
    """redis-py's network errors, which are not the built-in ones (a read past
    `socket_timeout` is raised `from None`). redis-py loads late (only with a Redis URL):
    nothing of it was raised before it was imported."""
    module = sys.modules.get("redis.exceptions")
    if module is None:
        return ()
    return (module.ConnectionError, module.TimeoutError)


def is_service_outage(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from or wraps, is a dependency's outage."""
    pending = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.TimeoutError):  # the pool's wait for a connection
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _DRIVER_OUTAGES):
            return True
        if isinstance(current, OSError) and current.errno in _UNREACHABLE:
            return True
        if isinstance(current, _redis_outages()):
            return True
        original = getattr(current, "orig", None)  # SQLAlchemy's wrapper: the driver's
        if isinstance(original, BaseException):
            pending.append(original)
        pending.append(current.__cause__)
    return False
