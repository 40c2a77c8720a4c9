"""PostgreSQL's pool pings a connection only after it sat idle (`weflux.db._ping_when_idle`),
and a serving process opens its connections at start (`Database.warm_pool`).

A ping at every checkout cost a round trip per unit of work (issue 11); a connection that
sat idle is still checked, and replaced before use when its backend went away. A pool that
opened its connections at the first burst made that burst's acknowledgements wait for them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.round_trips import round_trips
from tests.fixtures.services import TEST_DATABASE_URL
from tests.fixtures.settings import make_settings
from weflux import db as db_module
from weflux.app import create_app
from weflux.db import Database
from weflux.models import Organization
from weflux.runtime import runtime_of

pytestmark = pytest.mark.parametrize("dialect", ["postgresql"])


def _count_pings(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    dialect = database.engine.sync_engine.dialect
    ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


async def _backend(database: Database, org: Organization) -> int:
    async with database.session(org.id) as session:
        connection = await session.connection()
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_in_brisk_use_is_not_pinged(
    db: Database, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(db, monkeypatch)
    first = await _backend(db, org)
    for _ in range(5):
        assert await _backend(db, org) == first  # the same pooled connection
    assert pings == []


async def test_an_idle_connection_is_pinged_before_use(
    db: Database, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(db, monkeypatch)
    first = await _backend(db, org)
    monkeypatch.setattr(db_module, "IDLE_PING_AFTER", 0.0)
    assert await _backend(db, org) == first
    assert pings == [1]


async def test_an_idle_connection_s_ping_is_one_round_trip(
    db: Database, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a pooled connection idle past the limit, when a unit of work checks it out,
    then its ping is one simple query outside any transaction (SQLAlchemy's own is three:
    BEGIN, a prepared `;`, ROLLBACK), before the unit's BEGIN."""
    await _backend(db, org)
    monkeypatch.setattr(db_module, "IDLE_PING_AFTER", 0.0)
    with round_trips() as trips:
        await _backend(db, org)
    assert trips[0] == "query: SELECT 1"
    assert trips[1].startswith("query: BEGIN; SELECT set_config(")
    assert len(trips) == 4, trips  # and the unit's SELECT and COMMIT


async def test_an_idle_connection_whose_backend_went_away_is_replaced_before_use(
    db: Database, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = await _backend(db, org)
    # The server's superuser, on its maintenance database: it may end any backend.
    admin = create_async_engine(make_url(TEST_DATABASE_URL).set(database="postgres"))
    try:
        async with admin.connect() as connection:
            killed = await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": gone}
            )
            assert killed.scalar_one() is True
    finally:
        await admin.dispose()
    monkeypatch.setattr(db_module, "IDLE_PING_AFTER", 0.0)
    # The unit of work runs, on a new backend: nobody sees the dead connection.
    assert await _backend(db, org) != gone


def _opened(database: Database) -> list[int]:
    """Connections the pool opens from now on."""
    opened: list[int] = []
    event.listen(database.engine.sync_engine, "connect", lambda *_: opened.append(1))
    return opened


async def _at_once(database: Database, count: int) -> None:
    """`count` connections held at the same time (a burst's units of work), then returned."""
    held = await asyncio.gather(*(database.engine.connect().start() for _ in range(count)))
    for connection in held:
        await connection.close()


async def test_a_warmed_pool_opens_no_connection_for_a_burst(db: Database) -> None:
    """Given a pool with one connection open (a first unit of work),
    when it is warmed,
    then it holds its `pool_size` connections open, and as many units of work at once
    open none (without the warm-up each would wait for a new backend)."""
    await _at_once(db, 1)
    pool: Any = db.engine.sync_engine.pool
    opened = _opened(db)

    assert await db.warm_pool() == pool.size() == pool.checkedin()
    assert len(opened) == pool.size() - 1

    opened.clear()
    await _at_once(db, pool.size())
    assert opened == []


async def test_after_a_burst_units_one_after_another_reuse_one_connection(
    db: Database, org: Organization
) -> None:
    """Given a warmed pool (or one a burst filled),
    when units of work run one after another,
    then each gets the connection the last one returned: one backend, its prepared
    statements and caches warm (first in, first out, each took the next of the pool's
    connections in turn: p99 across processes doubled, issue 11)."""
    await db.warm_pool()
    await _at_once(db, 3)
    first = await _backend(db, org)
    for _ in range(5):
        assert await _backend(db, org) == first


async def test_a_serving_app_warms_its_pool_at_start(
    database_urls: DatabaseUrls, tmp_path: Path
) -> None:
    """Given `WEFLUX_DATABASE_WARM_POOL` (the default; the tests' settings turn it off),
    when the app starts serving, then its pool holds `WEFLUX_DATABASE_POOL_SIZE`
    connections open before the first request."""
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        database_warm_pool=True,
        database_pool_size=4,
    )
    app = create_app(settings)
    async with lifespan(app):
        pool: Any = runtime_of(app).db.engine.sync_engine.pool
        assert (pool.size(), pool.checkedin()) == (4, 4)
