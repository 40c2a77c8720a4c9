"""SQLite through aiosqlite in one thread hand-off per statement.

SQLAlchemy's aiosqlite adapter sends each step of a statement to aiosqlite's worker
thread on its own: creating the cursor, `execute`, `fetchall` when there are rows, and
`close`, each a queue put, a wake of the event loop and a future. Here a statement's
cursor is created, executed, drained and closed in one function on that thread, and the
adapted cursor serves the rows, description, rowcount and lastrowid it brought back.

Everything else is SQLAlchemy's own adapter, subclassed, not copied: error mapping, the
connection's `_execute_mutex`, server-side cursors (streamed results keep their
step-by-step cursor), isolation level, `create_function`, commit, rollback, close and
terminate. Engines get it with `create_async_engine(url, module=one_hop_dbapi())`; the
URL stays `sqlite+aiosqlite://` and SQLAlchemy's classes are not patched.

It relies on one private method of aiosqlite, `Connection._execute(fn, *args)` (queue
`fn` on the connection's thread and await its result), and its `_conn` property (the
`sqlite3.Connection`); `tests/test_sqlite_driver.py` pins both.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import URL, make_url

# What one hand-off brings back: description, rows (None without a description),
# rowcount, lastrowid.
_Outcome = tuple[Any, list[Any] | None, int, int | None]


def _run_statement(
    driver: aiosqlite.Connection, operation: str, parameters: Any, many: bool
) -> _Outcome:
    """On aiosqlite's thread: one statement from a new cursor to its closed end."""
    cursor = driver._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        # Closed at once, even when interrupted or failed: a statement left unfinalised
        # would keep its transaction (and SQLite's write lock) past a rollback.
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose statements cost one hand-off to aiosqlite's thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        super().__init__(adapt_connection)
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    # No aiosqlite cursor: each statement makes (and closes) its sqlite3 cursor on the
    # thread, so creating this one costs no hand-off.
    def _make_new_cursor(self, connection: Any) -> Any:
        return None

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing to close: the sqlite3 cursor closed on the thread, its results are here."""

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._run(operation, seq_of_parameters, many=True)

    async def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        self._description, self._rowcount, self._lastrowid = None, -1, None
        self._rows.clear()
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await self._connection._execute(
                _run_statement, self._connection, operation, parameters, many
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        if rows:
            self._rows = collections.deque(rows)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted aiosqlite connection, with `OneHopCursor` for client cursors.

    A rollback right after a completed commit or rollback, with no cursor made since, is
    skipped: there is no transaction to undo. That is the pool's reset when a connection
    comes back after a commit (SQLAlchemy rolls back on return unless its own rollback
    just ran), otherwise one more hand-off per unit of work. Hazard: work sent to the
    aiosqlite connection itself (`driver_connection`) is not seen here; whoever begins a
    transaction that way must end it that way (`weflux.db.interrupt` only rolls back).
    """

    __slots__ = ("_settled",)
    # mypy reads the base's attribute as exactly its class, not a subclass of it.
    _cursor_cls = OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # True only while the last thing done on the connection is a commit or rollback
        # that completed: a cancelled one may still be queued, and a statement (or any
        # cursor) may have begun a transaction.
        self._settled = False

    def cursor(self, server_side: bool = False) -> Any:
        self._settled = False
        return super().cursor(server_side)

    def commit(self) -> None:
        self._settled = False
        super().commit()
        self._settled = True

    def rollback(self) -> None:
        if self._settled:
            return
        super().rollback()
        self._settled = True


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, connecting with `OneHopConnection`."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def one_hop_dbapi() -> OneHopDBAPI:
    """The DBAPI module for `create_async_engine(..., module=)` on a `sqlite+aiosqlite` URL."""
    return OneHopDBAPI(aiosqlite, sqlite3)


def driver_options(url: str | URL) -> dict[str, Any]:
    """`create_async_engine` options that put a SQLite URL on this driver (none for others)."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"module": one_hop_dbapi()}
    return {}
