"""Which failures are a dependency's outage (503 UPSTREAM_UNAVAILABLE), not our fault."""

from __future__ import annotations

import errno
import sqlite3
import uuid

import asyncpg.exceptions as pg
import pytest
from graphql import GraphQLError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.services import TEST_REDIS_URL
from weflux.db_errors import MESSAGE, RETRY_AFTER, is_service_outage
from weflux.gql.errors import CodedErrors


def _wrapped(driver: Exception, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """The driver's error as SQLAlchemy raises it."""
    return sa_exc.DBAPIError("SELECT 1", {}, driver, connection_invalidated=invalidated)


def test_connection_failures_timeouts_and_a_full_pool_are_outages() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 5432)")
    assert is_service_outage(refused)
    assert is_service_outage(TimeoutError())  # silent past the answer timeout
    assert is_service_outage(sa_exc.TimeoutError("QueuePool limit of size 10 overflow 0 reached"))
    assert is_service_outage(_wrapped(pg.ConnectionDoesNotExistError("closed"), invalidated=True))
    assert is_service_outage(_wrapped(pg.AdminShutdownError("terminating connection")))
    assert is_service_outage(
        _wrapped(pg.CannotConnectNowError("the database system is starting up"))
    )
    assert is_service_outage(_wrapped(pg.TooManyConnectionsError("too many clients")))
    raised = RuntimeError("a call that failed")
    raised.__cause__ = refused  # `raise ... from refused`
    assert is_service_outage(raised)


def test_our_faults_and_sqlite_contention_are_not_outages() -> None:
    """SQLite's busy database is contention inside the process; a constraint, a bug, a
    statement cancelled by its own timeout are ours: 500 INTERNAL_SERVER_ERROR."""
    locked = sqlite3.OperationalError("database is locked")
    assert not is_service_outage(sa_exc.OperationalError("BEGIN IMMEDIATE", {}, locked))
    assert not is_service_outage(_wrapped(pg.UniqueViolationError("duplicate key")))
    assert not is_service_outage(_wrapped(pg.QueryCanceledError("canceling statement")))
    assert not is_service_outage(ValueError("a bug"))
    assert not is_service_outage(None)


def test_an_outage_in_graphql_is_coded_with_its_wait_and_shows_nothing_of_the_driver() -> None:
    driver = pg.ConnectionDoesNotExistError("connection to 10.0.0.5:5432 lost in SELECT secret")
    error = GraphQLError(
        str(driver), original_error=_wrapped(driver, invalidated=True), path=["viewer"]
    )
    (shown,) = CodedErrors()._process_errors([error])
    assert shown.message == MESSAGE
    assert shown.extensions == {"code": "UPSTREAM_UNAVAILABLE", "retryAfter": RETRY_AFTER}
    assert shown.original_error is None


@pytest.mark.parametrize(
    "host",
    [
        "db.invalid",  # a name that does not resolve (RFC 2606): socket.gaierror
        "[2001:db8::1]",  # documentation's addresses, no route: EHOSTUNREACH or ENETUNREACH
    ],
)
async def test_a_database_host_the_network_cannot_reach_is_an_outage(host: str) -> None:
    """Given a PostgreSQL whose name does not resolve (DNS away, a failover's record
    missing) or whose address has no route, when a connection is opened, then what
    the driver raises (a bare OSError, no ConnectionError) is an outage: 503 with
    Retry-After, not a 500 of ours (it was)."""
    engine = create_async_engine(
        f"postgresql+asyncpg://weflux@{host}:5432/weflux", connect_args={"timeout": 5}
    )
    try:
        with pytest.raises(OSError) as raised:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert is_service_outage(raised.value), repr(raised.value)


def test_a_file_s_os_error_is_not_an_outage() -> None:
    assert not is_service_outage(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not is_service_outage(PermissionError(errno.EACCES, "Permission denied"))


async def test_a_redis_silent_past_its_timeout_is_an_outage(require_redis: None) -> None:
    """Given Redis answering no command within the client's `socket_timeout`, then what
    redis-py raises (its own TimeoutError, raised `from None`: no built-in error in its
    chain) is an outage, as the docs say of Redis, not a 500 of ours (it was)."""
    client = Redis.from_url(TEST_REDIS_URL, socket_timeout=0.2)
    try:
        with pytest.raises(RedisError) as raised:
            await client.blpop([f"weflux-test:{uuid.uuid4().hex}"], 0)
    finally:
        await client.aclose()
    assert is_service_outage(raised.value), repr(raised.value)
