"""PostgreSQL's pool pings a connection only after it sat idle (`weflux.db._ping_when_idle`).

A ping at every checkout cost a round trip per unit of work (issue 11); a connection that
sat idle is still checked, and replaced before use when its backend went away.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.round_trips import round_trips
from tests.fixtures.services import TEST_DATABASE_URL
from weflux import db as db_module
from weflux.db import Database
from weflux.models import Organization

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
