"""SQLite in one hand-off per statement (weflux.sqlite_driver), behind every engine of weflux.db.

Each behaviour is checked through `weflux.db.create_engine` (the app's wiring); errors are
compared with SQLAlchemy's own aiosqlite adapter on the same database.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import bindparam, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from weflux.db import _READ_ONLY, SQLITE_BUSY_TIMEOUT_MS, Database, create_engine, interrupt
from weflux.sqlite_driver import (
    INLINE,
    INLINE_MAX_PARAMETERS,
    INLINE_MAX_ROWS,
    OneHopConnection,
    OneHopCursor,
    OneHopDBAPI,
    driver_options,
)

HANG_GUARD = 60  # seconds; far above anything here
# Statements that call `started()` once they run (`signal_when_started`): one that never
# ends by itself, one that takes a while (a few 100 ms).
ENDLESS_ONCE_STARTED = (
    "WITH RECURSIVE n(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
)
SLOW = (
    "WITH RECURSIVE n(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM n WHERE x < 2000000) "
    "SELECT count(*) FROM n"
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}"


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"))
        await conn.execute(text("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"))
    yield engine
    await engine.dispose()


@pytest.fixture
def hops() -> Iterator[list[str]]:
    """The functions sent to aiosqlite's thread (its `Connection._execute`), in order."""
    sent: list[str] = []
    real: Any = aiosqlite.Connection._execute  # untyped in aiosqlite

    async def counted(self: aiosqlite.Connection, fn: Callable[..., Any], *a: Any, **k: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiosqlite.Connection, "_execute", counted)
        yield sent


async def values(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars())


async def insert_in_savepoint(session: AsyncSession, *new: str) -> None:
    async with session.begin_nested():
        nested = await session.connection()  # emits the SAVEPOINT
        for value in new:
            await nested.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})


async def signal_when_started(conn: AsyncConnection) -> asyncio.Event:
    """An event set from aiosqlite's thread when a statement calls SQL's `started()`."""
    loop, started = asyncio.get_running_loop(), asyncio.Event()

    def signal() -> int:
        loop.call_soon_threadsafe(started.set)
        return 1

    def register(sync_conn: Any) -> None:
        sync_conn.connection.dbapi_connection.create_function("started", 0, signal)

    await conn.run_sync(register)
    return started


def test_the_app_engines_use_the_one_hop_driver(url: str) -> None:
    # Given the app's database handle on a sqlite+aiosqlite URL
    db = Database(url)
    # Then its engine's DBAPI is the one-hop shim, and the URL is the user's
    assert isinstance(db.engine.sync_engine.dialect.dbapi, OneHopDBAPI)
    assert db.engine.url.drivername == "sqlite+aiosqlite"
    # And the benchmarks' floors get it the same way, for SQLite only
    assert isinstance(driver_options(url)["module"], OneHopDBAPI)
    assert driver_options("postgresql+asyncpg://app@db/weflux") == {}


async def test_the_aiosqlite_internals_it_relies_on_are_still_there(tmp_path: Path) -> None:
    # aiosqlite's Connection._execute(fn, *args) is private: if this fails, aiosqlite changed
    # and weflux.sqlite_driver must be revisited (docs/development.md, "SQLite driver").
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert list(inspect.signature(aiosqlite.Connection._execute).parameters) == [
        "self",
        "fn",
        "args",
        "kwargs",
    ]
    driver = await aiosqlite.connect(tmp_path / "pin.db")
    execute: Any = driver._execute  # untyped in aiosqlite
    try:
        assert isinstance(driver._conn, sqlite3.Connection)
        assert driver._connection is driver._conn  # None once closed
        # It runs the function on the connection's own thread, with the arguments given
        ran_on = await execute(lambda a, b=0: (threading.get_ident(), a + b), 1, b=2)
        assert ran_on == (driver._thread.ident, 3)
        assert ran_on[0] != threading.get_ident()
        # And a failure there is raised to the awaiting task as it is
        with pytest.raises(sqlite3.OperationalError):
            await execute(driver._conn.execute, "SELECT * FROM missing")
    finally:
        await driver.close()
    assert driver._connection is None
    # Closed: ValueError, which SQLAlchemy's adapter maps to OperationalError
    with pytest.raises(ValueError, match="Connection closed"):
        await execute(lambda: None)
    # And SQLAlchemy's adapter still builds client cursors from `_cursor_cls`
    assert OneHopConnection._cursor_cls is OneHopCursor


async def test_rows_empty_results_and_a_statement_without_rows(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        # Rows, one at a time and in parts
        result = await conn.execute(text("SELECT id, v FROM t ORDER BY id"))
        assert list(result.keys()) == ["id", "v"]
        assert result.fetchone() == (1, "a")
        assert result.fetchmany(1) == [(2, "b")]
        assert result.fetchall() == [(3, "c")]
        # An empty result keeps its columns
        empty = await conn.execute(text("SELECT id, v FROM t WHERE 0"))
        assert list(empty.keys()) == ["id", "v"]
        assert empty.all() == []
        # A statement that returns no rows has no description
        update = await conn.execute(text("UPDATE t SET v = v WHERE 0"))
        assert not update.returns_rows

        def delete_nothing(sync_conn: Any) -> tuple[Any, int]:
            cursor = sync_conn.connection.dbapi_connection.cursor()
            cursor.execute("DELETE FROM t WHERE 0")
            return cursor.description, cursor.rowcount

        assert await conn.run_sync(delete_nothing) == (None, 0)


async def test_rowcount_lastrowid_executemany_and_returning(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
        assert inserted.lastrowid == 4
        assert inserted.rowcount == 1
        many = await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "e"}, {"v": "f"}])
        assert many.rowcount == 2
        updated = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 3"))
        assert updated.rowcount == 3
        deleted = await conn.execute(text("DELETE FROM t WHERE id > 4"))
        assert deleted.rowcount == 2
        returned = await conn.execute(text("INSERT INTO t (v) VALUES ('g') RETURNING id, v"))
        assert returned.all() == [(5, "g")]  # max(id) + 1
        assert await values(conn) == ["a", "b", "c", "d!", "g"]


FAILING = [
    "INSERT INTO t (v) VALUES ('a')",  # IntegrityError
    "INSERT INTO t (v) VALUES (NULL)",  # IntegrityError (NOT NULL)
    "SELECT * FROM missing",  # OperationalError
    "SELEC 1",  # OperationalError (syntax)
    "SELECT 1; SELECT 2",  # ProgrammingError (one statement at a time)
]


@pytest.mark.parametrize("statement", FAILING)
async def test_errors_are_mapped_exactly_as_by_sqlalchemy_s_adapter(
    engine: AsyncEngine, url: str, statement: str
) -> None:
    # Given the same failing statement through SQLAlchemy's adapter and through ours
    stock = create_async_engine(url)
    caught: list[exc.DBAPIError] = []
    try:
        for each in (stock, engine):
            async with each.connect() as conn:
                with pytest.raises(exc.DBAPIError) as failure:
                    await conn.execute(text(statement))
                caught.append(failure.value)
                # And the connection is usable after it
                assert await values(conn) == ["a", "b", "c"]
    finally:
        await stock.dispose()
    # Then both raise the same SQLAlchemy error around the same sqlite3 error
    theirs, ours = caught
    assert type(ours) is type(theirs)
    assert type(ours.orig) is type(theirs.orig)
    assert str(ours.orig) == str(theirs.orig)
    assert ours.statement == theirs.statement


async def test_an_error_mid_transaction_then_rollback(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
        with pytest.raises(exc.IntegrityError):
            await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        await conn.rollback()
        assert await values(conn) == ["a", "b", "c"]


async def test_a_savepoint_rolls_back_alone(url: str, engine: AsyncEngine) -> None:
    db = Database(url)
    try:
        async with db.sessionmaker() as session:
            conn = await session.connection()
            await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
            with pytest.raises(exc.IntegrityError):
                await insert_in_savepoint(session, "e", "a")
            await session.commit()
    finally:
        await db.dispose()
    async with engine.connect() as conn:
        assert await values(conn) == ["a", "b", "c", "d"]


async def test_one_hand_off_per_statement_and_none_for_the_pool_s_reset(
    engine: AsyncEngine, hops: list[str]
) -> None:
    # A statement with rows, one without, and an empty result: one hand-off each
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # the pool's first checkout settles first
        hops.clear()
        (await conn.execute(text("SELECT * FROM t"))).all()
        assert hops == ["_run_statement"]
        await conn.execute(text("SELECT * FROM t WHERE 0"))
        await conn.execute(text("UPDATE t SET v = v WHERE 0"))
        assert hops == ["_run_statement"] * 3
        hops.clear()
    # A connection given back without a commit is rolled back (one hand-off)
    assert hops == ["rollback"]
    # A unit of work: the statement and COMMIT (its BEGIN IMMEDIATE, with no other writer,
    # runs inline: see below); nothing when given back
    hops.clear()
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
    assert hops == ["_run_statement", "commit"]
    # And the next unit of work on that connection still begins and commits
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('e')"))
    async with engine.connect() as conn:
        assert await values(conn) == ["a", "b", "c", "d", "e"]


async def test_server_side_cursors_stream_as_before(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        result = await conn.stream(text("SELECT v FROM t ORDER BY id"))
        assert [row[0] async for row in result] == ["a", "b", "c"]
        assert await values(conn) == ["a", "b", "c"]


async def test_create_function_and_invalidation(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:

        def register(sync_conn: Any) -> None:
            sync_conn.connection.dbapi_connection.create_function("twice", 1, lambda x: 2 * x)

        await conn.run_sync(register)
        assert (await conn.execute(text("SELECT twice(21)"))).scalar() == 42
        # An invalidated connection is closed (terminated) and replaced on next use
        await conn.invalidate()
    async with engine.connect() as conn:
        assert await values(conn) == ["a", "b", "c"]


async def test_interrupt_aborts_the_statement_and_releases_the_write_lock(
    url: str, engine: AsyncEngine
) -> None:
    db = Database(url)
    try:
        async with db.sessionmaker() as session:
            # Given a unit of work that has written and then runs an endless statement
            conn = await session.connection()
            await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
            started = await signal_when_started(conn)
            running = asyncio.create_task(conn.execute(text(ENDLESS_ONCE_STARTED)))
            async with asyncio.timeout(HANG_GUARD):
                await started.wait()
                # When it is interrupted
                await interrupt(session)
                # Then the statement fails as interrupted
                with pytest.raises(exc.OperationalError, match="interrupted"):
                    await running
            await session.rollback()
        # And its write was undone, and another writer is not kept waiting
        async with asyncio.timeout(HANG_GUARD / 6), engine.begin() as writer:
            await writer.execute(text("INSERT INTO t (v) VALUES ('e')"))
            assert await values(writer) == ["a", "b", "c", "e"]
    finally:
        await db.dispose()


async def test_a_cancelled_statement_leaves_the_connection_usable(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        started = await signal_when_started(conn)
        await conn.begin()
        await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
        # Given a slow statement whose awaiting task is cancelled once it runs
        slow = asyncio.create_task(conn.execute(text(SLOW)))
        async with asyncio.timeout(HANG_GUARD):
            await started.wait()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # When it is rolled back (SQLAlchemy invalidates a connection whose statement
        # was cancelled: it closes the driver's connection once the statement ends)
        async with asyncio.timeout(HANG_GUARD):
            await conn.rollback()
            # Then it answers again, on a new driver connection, without the write
            assert await values(conn) == ["a", "b", "c"]
    # And the write lock was released: another unit of work writes
    async with asyncio.timeout(HANG_GUARD / 6), engine.begin() as writer:
        await writer.execute(text("INSERT INTO t (v) VALUES ('e')"))
        assert await values(writer) == ["a", "b", "c", "e"]


# Inline statements (`weflux_inline`): on the event loop's thread, only while the
# transaction holds the write lock.

WHERE = text("SELECT ran_on()").execution_options(**{INLINE: True})


async def where_it_runs(conn: AsyncConnection) -> None:
    """SQL's `ran_on()`: 'loop' on the event loop's thread, 'thread' on aiosqlite's."""
    loop_thread = threading.get_ident()

    def ran_on() -> str:
        return "loop" if threading.get_ident() == loop_thread else "thread"

    def register(sync_conn: Any) -> None:
        sync_conn.connection.dbapi_connection.create_function("ran_on", 0, ran_on)

    await conn.run_sync(register)


async def ran_on(conn: AsyncConnection, statement: Any = WHERE) -> str:
    return str((await conn.execute(statement)).scalar_one())


async def adapted(conn: AsyncConnection) -> OneHopConnection:
    raw = (await conn.get_raw_connection()).dbapi_connection
    assert isinstance(raw, OneHopConnection)
    return raw


def outside_a_transaction(operation: str) -> Callable[[Any], Any]:
    """For `run_sync`: `operation`, marked, on the connection's own cursor, with no BEGIN
    (SQLAlchemy's connections begin by themselves at their first statement)."""

    def run(sync_conn: Any) -> Any:
        cursor = sync_conn.connection.dbapi_connection.cursor()
        cursor._inline = True
        cursor.execute(operation)
        return cursor.fetchall()

    return run


async def test_a_marked_statement_runs_inline_only_while_the_write_lock_is_held(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        await where_it_runs(conn)
        # Outside a transaction: its hand-off
        assert await conn.run_sync(outside_a_transaction("SELECT ran_on()")) == [("thread",)]
        # Given a unit of work that may write (BEGIN IMMEDIATE, a hand-off of its own)
        await conn.begin()
        # Then marked statements run inline, unmarked ones hop, and the lock is still held
        assert await ran_on(conn) == "loop"
        assert await ran_on(conn, text("SELECT ran_on()")) == "thread"
        insert = text("INSERT INTO t (v) VALUES (ran_on())").execution_options(**{INLINE: True})
        await conn.execute(insert)
        # And within a savepoint, and after it rolled back
        savepoint = await conn.begin_nested()
        assert await ran_on(conn) == "loop"
        await savepoint.rollback()
        assert await ran_on(conn) == "loop"
        await conn.commit()
        # After the commit: a hand-off again
        assert await conn.run_sync(outside_a_transaction("SELECT ran_on()")) == [("thread",)]
        assert await values(conn) == ["a", "b", "c", "loop"]
        # And after a rollback
        await conn.rollback()
        await conn.begin()
        assert await ran_on(conn) == "loop"
        await conn.rollback()
        assert await conn.run_sync(outside_a_transaction("SELECT ran_on()")) == [("thread",)]


async def test_a_read_only_unit_and_an_engine_that_does_not_opt_in_always_hop(
    url: str, engine: AsyncEngine
) -> None:
    # A reader's deferred transaction takes no lock: a marked statement hops
    async with engine.connect() as conn:
        await where_it_runs(conn)
        await conn.execution_options(**{_READ_ONLY: True})
        await conn.begin()
        assert await ran_on(conn) == "thread"
        await conn.rollback()
    # An engine on the driver without `mark_inline_statements` (the benchmarks' floors)
    floor = create_async_engine(url, **driver_options(url))
    try:
        async with floor.connect() as conn:
            await where_it_runs(conn)
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            assert await ran_on(conn) == "thread"
            await conn.rollback()
    finally:
        await floor.dispose()


async def test_a_transaction_ended_by_a_statement_stops_inline_runs(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await where_it_runs(conn)
        await conn.begin()
        assert await ran_on(conn) == "loop"
        # When a statement ends the transaction behind SQLAlchemy's back (as SQLite does
        # itself on some errors)
        await conn.execute(text("COMMIT").execution_options(**{INLINE: True}))
        # Then nothing more runs inline: the connection holds no lock
        assert await ran_on(conn) == "thread"
        await conn.rollback()


async def test_a_transaction_ended_then_a_savepoint_does_not_run_inline_without_the_lock(
    url: str, engine: AsyncEngine
) -> None:
    """Given a unit of work whose transaction ended under it (as SQLite rolls back by
    itself after SQLITE_FULL or an I/O error in an inline statement), with no marked
    statement since to notice,
    when a SAVEPOINT comes (SQLite begins a new, deferred transaction for it: no lock),
    then marked statements hop: inline, a write would wait for another process's write
    lock on the event loop's thread, for the whole busy timeout."""
    async with engine.connect() as conn:
        await where_it_runs(conn)
        await conn.begin()
        assert await ran_on(conn) == "loop"
        await conn.execute(text("COMMIT").execution_options(**{INLINE: True}))
        await conn.exec_driver_sql("SAVEPOINT unlocked")
        assert (await adapted(conn))._connection._conn.in_transaction
        # Another process takes the write lock the deferred transaction never took
        other = sqlite3.connect(url.split("///", 1)[1], timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            assert await ran_on(conn) == "thread"
            other.execute("ROLLBACK")
        finally:
            other.close()
        await conn.rollback()


async def test_a_large_executemany_or_in_list_hops_even_when_marked(
    engine: AsyncEngine, hops: list[str]
) -> None:
    insert = text("INSERT INTO t (v) VALUES (:v)").execution_options(**{INLINE: True})
    lookup = (
        text("SELECT count(*) FROM t WHERE v IN :vs")
        .bindparams(bindparam("vs", expanding=True))
        .execution_options(**{INLINE: True})
    )
    async with engine.begin() as conn:
        hops.clear()
        await conn.execute(insert, [{"v": f"s{i}"} for i in range(INLINE_MAX_ROWS)])
        assert (await conn.execute(lookup, {"vs": ["a"] * INLINE_MAX_PARAMETERS})).scalar() == 1
        assert hops == []
        await conn.execute(insert, [{"v": f"l{i}"} for i in range(INLINE_MAX_ROWS + 1)])
        assert (await conn.execute(lookup, {"vs": ["a"] * (INLINE_MAX_PARAMETERS + 1)})).scalar()
        assert hops == ["_run_statement", "_run_statement"]
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 3 + 129


@pytest.mark.parametrize("statement", FAILING)
async def test_errors_inline_are_mapped_exactly_as_by_sqlalchemy_s_adapter(
    engine: AsyncEngine, url: str, statement: str, hops: list[str]
) -> None:
    # Given the failing statement through SQLAlchemy's adapter, and marked through ours in
    # a unit of work that may write
    stock = create_async_engine(url)
    try:
        async with stock.connect() as conn:
            with pytest.raises(exc.DBAPIError) as failure:
                await conn.execute(text(statement))
            theirs = failure.value
    finally:
        await stock.dispose()
    async with engine.connect() as conn:
        await conn.begin()
        hops.clear()
        with pytest.raises(exc.DBAPIError) as failure:
            await conn.execute(text(statement).execution_options(**{INLINE: True}))
        ours = failure.value
        # Then it ran inline and raised the same SQLAlchemy error around the same sqlite3 error
        assert hops == []
        assert type(ours) is type(theirs)
        assert type(ours.orig) is type(theirs.orig)
        assert str(ours.orig) == str(theirs.orig)
        assert ours.statement == theirs.statement
        # And the unit of work goes on (the lock still held), then rolls back
        await conn.execute(
            text("INSERT INTO t (v) VALUES ('d')").execution_options(**{INLINE: True})
        )
        assert hops == []
        await conn.rollback()
        assert await values(conn) == ["a", "b", "c"]


async def test_a_marked_statement_waits_for_another_writer_in_its_hand_off(
    engine: AsyncEngine,
) -> None:
    """Never inline without the lock: a writer waits in aiosqlite's thread, the loop runs."""
    gaps: list[float] = []

    async def ticking() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    insert = text("INSERT INTO t (v) VALUES ('unit-' || ran_on())")

    async def unit_of_work(conn: AsyncConnection) -> None:
        async with conn.begin():
            await conn.execute(insert.execution_options(**{INLINE: True}))

    async def waits_until_released(work: asyncio.Task[Any], holder: AsyncConnection) -> None:
        gaps.clear()
        await asyncio.sleep(0.3)
        # It waits, and the event loop goes on meanwhile
        assert not work.done()
        assert max(gaps) < 0.25
        # Until the lock is released
        await holder.commit()
        async with asyncio.timeout(HANG_GUARD / 6):
            await work

    async with engine.connect() as holder, engine.connect() as waiter:
        await where_it_runs(waiter)
        ticker = asyncio.create_task(ticking())
        try:
            # Given another connection holding the write lock
            await holder.begin()
            await holder.execute(text("INSERT INTO t (v) VALUES ('held')"))
            # When a marked INSERT comes outside a transaction: it waits in its hand-off
            outside = outside_a_transaction("INSERT INTO t (v) VALUES ('outside-' || ran_on())")
            await waits_until_released(asyncio.create_task(waiter.run_sync(outside)), holder)
            # And a unit of work waits in its BEGIN IMMEDIATE's hand-off
            await holder.begin()
            await holder.execute(text("INSERT INTO t (v) VALUES ('held again')"))
            await waits_until_released(asyncio.create_task(unit_of_work(waiter)), holder)
        finally:
            ticker.cancel()
    async with engine.connect() as conn:
        # The first hopped; the unit's INSERT ran inline once its BEGIN had the lock
        assert await values(conn) == [
            "a",
            "b",
            "c",
            "held",
            "outside-thread",
            "held again",
            "unit-loop",
        ]


async def test_a_cancelled_hand_off_or_an_interrupt_stops_inline_runs(
    url: str, engine: AsyncEngine
) -> None:
    async with engine.connect() as conn:
        started = await signal_when_started(conn)
        await conn.begin()
        connection = await adapted(conn)
        assert connection._may_run_inline()
        # Given a hand-off whose awaiting task is cancelled while it runs on the thread
        slow = asyncio.create_task(conn.execute(text(SLOW)))
        async with asyncio.timeout(HANG_GUARD):
            await started.wait()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # Then nothing runs inline on the connection (the statement may still be running)
        assert not connection._may_run_inline()
        async with asyncio.timeout(HANG_GUARD):
            await conn.rollback()
    db = Database(url)
    try:
        async with db.sessionmaker() as session:
            # Given a unit of work holding the lock, between statements
            conn = await session.connection()
            await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
            connection = await adapted(conn)
            assert connection._may_run_inline()
            # When it is interrupted (its rollback queued on the thread)
            await interrupt(session)
            # Then nothing runs inline until a new unit of work holds the lock
            assert not connection._may_run_inline()
            await session.rollback()
            await where_it_runs(await session.connection())
            assert await ran_on(await session.connection()) == "loop"
            await session.commit()
    finally:
        await db.dispose()
    async with engine.connect() as conn:
        assert await values(conn) == ["a", "b", "c"]


async def test_begin_runs_inline_unless_it_would_wait(
    url: str, engine: AsyncEngine, hops: list[str]
) -> None:
    async with engine.connect() as waiter:
        await where_it_runs(waiter)
        busy_timeout = text("PRAGMA busy_timeout")
        # With no other writer: BEGIN IMMEDIATE takes no hand-off, nor a reader's BEGIN
        hops.clear()
        await waiter.begin()
        assert hops == []
        assert await ran_on(waiter) == "loop"
        await waiter.rollback()
        await waiter.execution_options(**{_READ_ONLY: True})
        hops.clear()
        await waiter.begin()
        assert hops == []
        assert await ran_on(waiter) == "thread"  # no write lock: the statement hops
        await waiter.rollback()
        await waiter.execution_options(**{_READ_ONLY: False})
        # Given another process's writer (this process's writers wait for each other in
        # turn, before BEGIN: test_a_writer_waits_for_a_writer_of_its_process_in_turn...)
        holder = sqlite3.connect(url.split("///", 1)[1], timeout=0, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("INSERT INTO t (v) VALUES ('held')")
            # When a unit of work begins: its BEGIN IMMEDIATE takes its hand-off and waits
            hops.clear()
            begun = asyncio.create_task(waiter.begin().start())
            await asyncio.sleep(0.2)
            assert not begun.done()
            assert hops == ["_run_statement"]
            holder.execute("COMMIT")
            async with asyncio.timeout(HANG_GUARD / 6):
                await begun
        finally:
            holder.close()
        # Then it holds the lock, and its busy timeout is the engine's again
        assert await ran_on(waiter) == "loop"
        assert (await waiter.execute(busy_timeout)).scalar() == SQLITE_BUSY_TIMEOUT_MS
        await waiter.rollback()


# The process's turn at the write lock: its writers wait for each other on the event loop,
# in the order they came, not in SQLite's busy handler (which sleeps 1, 2, 5 ... 100 ms
# between tries, while the lock may be free).


@pytest.fixture
def begins_handed_off() -> Iterator[list[str]]:
    """The BEGINs sent to aiosqlite's thread, in order (a new connection's PRAGMAs and
    anything else not listed)."""
    sent: list[str] = []
    real: Any = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Callable[..., Any], *a: Any, **k: Any) -> Any:
        if len(a) > 1 and isinstance(a[1], str) and a[1].upper().startswith("BEGIN"):
            sent.append(a[1])
        return await real(self, fn, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiosqlite.Connection, "_execute", counted)
        yield sent


async def test_a_writer_waits_for_a_writer_of_its_process_in_turn_not_in_sqlite(
    engine: AsyncEngine, begins_handed_off: list[str]
) -> None:
    async with engine.connect() as holder:
        # Given a unit of work of this process holding the write lock
        await holder.begin()
        await holder.execute(text("INSERT INTO t (v) VALUES ('held')"))
        order: list[str] = []

        async def unit_of_work(name: str) -> None:
            async with engine.connect() as conn:
                await where_it_runs(conn)
                async with conn.begin():
                    order.append(name)
                    insert = text("INSERT INTO t (v) VALUES (:v || '-' || ran_on())")
                    await conn.execute(insert.execution_options(**{INLINE: True}), {"v": name})

        # When three more begin, one after another
        waiting = []
        for name in ("first", "second", "third"):
            waiting.append(asyncio.create_task(unit_of_work(name)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        # Then they wait in the process: no BEGIN was handed to aiosqlite's thread
        assert not any(task.done() for task in waiting)
        assert begins_handed_off == []
        # And once the lock is given back, each begins inline, in the order they came
        await holder.commit()
        async with asyncio.timeout(HANG_GUARD / 6):
            await asyncio.gather(*waiting)
        assert order == ["first", "second", "third"]
        assert begins_handed_off == []
    async with engine.connect() as conn:
        assert (await values(conn))[3:] == ["held", "first-loop", "second-loop", "third-loop"]


async def test_the_turn_is_given_back_however_the_transaction_ends(
    url: str, engine: AsyncEngine, begins_handed_off: list[str]
) -> None:
    async def next_writer_begins_inline() -> None:
        async with asyncio.timeout(1), engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES (hex(randomblob(8)))"))
        assert begins_handed_off == []

    async with engine.connect() as conn:
        # A rollback
        await conn.begin()
        await conn.rollback()
        await next_writer_begins_inline()
        # A statement that ends the transaction (noticed by the next marked statement)
        await conn.begin()
        await conn.execute(text("COMMIT").execution_options(**{INLINE: True}))
        await next_writer_begins_inline()
        await conn.rollback()
        # A failed BEGIN IMMEDIATE (another process held the lock past the busy timeout)
        other = sqlite3.connect(url.split("///", 1)[1], timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            (await adapted(conn))._busy_timeout_ms = 50  # what the inline try restores
            with pytest.raises(exc.OperationalError, match="database is locked"):
                await conn.begin()
            await conn.rollback()
            other.execute("ROLLBACK")
        finally:
            other.close()
        begins_handed_off.clear()
        await next_writer_begins_inline()
    # A connection given back to the pool in a transaction (the pool's reset rolls back)
    async with engine.connect() as conn:
        await conn.begin()
    await next_writer_begins_inline()
    # A connection invalidated in a transaction
    async with engine.connect() as conn:
        await conn.begin()
        await conn.invalidate()
    await next_writer_begins_inline()


async def test_a_writer_of_another_process_is_still_waited_for_in_the_hand_off(
    url: str, engine: AsyncEngine, begins_handed_off: list[str]
) -> None:
    other = sqlite3.connect(url.split("///", 1)[1], timeout=0, isolation_level=None)
    try:
        # Given another process holding the write lock
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (v) VALUES ('other')")
        async with engine.connect() as waiter:
            # When a unit of work begins: its BEGIN IMMEDIATE takes its hand-off and waits
            begun = asyncio.create_task(waiter.begin().start())
            await asyncio.sleep(0.2)
            assert not begun.done()
            assert begins_handed_off == ["BEGIN IMMEDIATE"]
            # And a second writer of this process waits for the first, in the process
            second = asyncio.create_task(engine.begin().__aenter__())
            await asyncio.sleep(0.2)
            assert not second.done()
            assert begins_handed_off == ["BEGIN IMMEDIATE"]
            other.execute("COMMIT")
            async with asyncio.timeout(HANG_GUARD / 6):
                await begun
            await asyncio.sleep(0.1)
            assert not second.done()
            await waiter.rollback()
            async with asyncio.timeout(HANG_GUARD / 6):
                conn = await second
            await conn.rollback()
            await conn.close()
    finally:
        other.close()
