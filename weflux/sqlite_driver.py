"""SQLite through aiosqlite: one thread hand-off per statement, none for inline statements.

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

Inline statements (no hand-off at all): a statement marked with the execution option
`weflux_inline` (`inline(statement)`) runs on the calling, event loop's, thread, but only
while its connection is known to hold SQLite's write lock with nothing queued on its
thread: after a `BEGIN IMMEDIATE` (or EXCLUSIVE) sent through this driver has completed,
until anything else is queued there or the transaction ends (commit, rollback, `abort`, a
statement ending it, SQLite rolling back by itself after some errors), and only on a WAL
database (`allow_inline`). Such a statement never waits for a lock: in WAL mode a
transaction holding the write lock reads its snapshot and writes with no other lock, and
SQLite's busy handler is never called. So it blocks the loop only for its own work: mark
only statements bounded whatever the database's size (rows by primary key or a unique
index, a bounded number of rows written). Anywhere else (before BEGIN, outside a
transaction, a reader's deferred transaction, after a cancelled hand-off, an interrupt or a
server-side cursor) a marked statement takes its hand-off like any other, and an
executemany of more than `INLINE_MAX_ROWS` rows (or a statement of more than
`INLINE_MAX_PARAMETERS` parameters) always does. A marked BEGIN runs inline
when it cannot wait (deferred: it touches no file; IMMEDIATE: tried with no busy timeout,
else its hand-off waits for the other writer); COMMIT keeps its hand-off (it may
checkpoint the WAL). Errors are the same sqlite3 exceptions, mapped by the same SQLAlchemy
code. An engine's cursors hear of the option through `mark_inline_statements(engine)`
(weflux.db's engines); an engine without it (the benchmarks' floors) runs nothing inline.

Writers of one process take turns on the event loop (`_WriterTurns`): a `BEGIN IMMEDIATE`
first waits, in the order they came, for the other writers of this process on the same
database file to end their transactions, then takes SQLite's write lock (inline, as above).
Without the turn, a writer that found the lock held waited in SQLite's busy handler, which
sleeps 1, 2, 5, 10 ... 100 ms between tries while the lock may long be free: under a burst
of webhooks, the lock sat idle between units of work. Another process's writer is still
waited for in the hand-off (the busy handler), as before; a turn not given within the busy
timeout is not waited for longer (the BEGIN then takes its hand-off, and fails as before
if the lock stays held).

It relies on aiosqlite's private `Connection._execute(fn, *args)` (queue `fn` on the
connection's thread and await its result), its `_conn` property (the `sqlite3.Connection`)
and `_connection` attribute (the same, or None once closed); `tests/test_sqlite_driver.py`
pins them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import weakref
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.sql import Executable
from sqlalchemy.util.concurrency import await_

# What one hand-off brings back: description, rows (None without a description),
# rowcount, lastrowid.
_Outcome = tuple[Any, list[Any] | None, int, int | None]
_NOTHING: _Outcome = (None, None, -1, None)

# The execution option that lets a statement run inline (see the module's docstring).
INLINE = "weflux_inline"
# An executemany of more rows than this, or a statement with more parameters than
# `INLINE_MAX_PARAMETERS` (an IN list of many ids), hops even when marked: it is bounded
# by its caller, but its caller's bound (a webhook's size) may be large.
INLINE_MAX_ROWS = 64
INLINE_MAX_PARAMETERS = 256

_Statement = TypeVar("_Statement", bound=Executable)


def inline(statement: _Statement) -> _Statement:
    """`statement`, marked to run inline on SQLite when its transaction holds the write lock.

    Only for a statement whose work is bounded whatever the database's size (rows found by
    primary key or a unique index, a bounded number of rows written): the event loop waits
    for it. Other engines ignore the mark.
    """
    return statement.execution_options(**{INLINE: True})


_TAKE_WRITE_LOCK = frozenset({"BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"})
_BEGIN = _TAKE_WRITE_LOCK | {"BEGIN", "BEGIN DEFERRED"}


def _takes_write_lock(operation: str) -> bool:
    """Whether a statement begins a transaction holding SQLite's write lock."""
    return len(operation) < 32 and operation.strip().upper() in _TAKE_WRITE_LOCK


def _quietly(conn: sqlite3.Connection, operation: str) -> None:
    """A statement run to its end (its rows drained, its cursor closed)."""
    cursor = conn.cursor()
    try:
        cursor.execute(operation)
        cursor.fetchall()
    finally:
        cursor.close()


def _in_transaction(driver: aiosqlite.Connection) -> bool:
    """Whether the sqlite3 connection is in a transaction (False once closed)."""
    conn: sqlite3.Connection | None = driver._connection
    return conn is not None and conn.in_transaction


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


class _WriterTurns:
    """The turns at one database file's write lock among this process's connections, on
    each event loop: FIFO (`asyncio.Lock`), taken before a `BEGIN IMMEDIATE`, given back
    when that transaction ends, however it ends (`OneHopConnection._end_turn`)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock


_TURNS: dict[str, _WriterTurns] = {}


def _turns_of(database: Any) -> _WriterTurns | None:
    """The write-lock turns of a database file (None for an in-memory or temporary one)."""
    name = os.fspath(database) if isinstance(database, str | os.PathLike) else ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    key = os.path.realpath(name)
    turns = _TURNS.get(key)
    if turns is None:
        turns = _TURNS[key] = _WriterTurns()
    return turns


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose statements cost one hand-off to aiosqlite's thread."""

    __slots__ = ("_arraysize", "_description", "_inline", "_lastrowid", "_rowcount")
    _adapt_connection: OneHopConnection
    _connection: aiosqlite.Connection  # type: ignore[assignment]  # the base's protocol

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        super().__init__(adapt_connection)
        # Set by `mark_inline_statements` for a statement with the `INLINE` option.
        self._inline = False
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

    # Called through `execute`/`executemany` (SQLAlchemy's), which await them in the
    # greenlet and map a failure; an inline statement completes within that await without
    # suspending (SQLAlchemy requires an await in each async call: this one costs a
    # greenlet switch, not a loop iteration).
    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        self._keep(_NOTHING)
        adapt = self._adapt_connection
        if (
            self._inline
            and adapt._may_run_inline()
            and len(parameters or ()) <= INLINE_MAX_PARAMETERS
        ):
            self._keep(_run_statement(self._connection, operation, parameters, False))
            adapt._end_turn_unless_in_transaction()  # a statement may end the transaction
            return
        # A BEGIN IMMEDIATE first waits for this process's other writers (`_WriterTurns`).
        turn = not parameters and _takes_write_lock(operation) and await adapt._take_turn()
        try:
            if self._inline and not parameters and adapt._began_inline(operation):
                return
            await self._run(operation, parameters, many=False)
        except BaseException:
            if turn:  # it began no transaction: the next writer's turn
                adapt._end_turn_unless_in_transaction()
            raise

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        self._keep(_NOTHING)
        if (
            self._inline
            and isinstance(seq_of_parameters, list | tuple)
            and len(seq_of_parameters) <= INLINE_MAX_ROWS
            and self._adapt_connection._may_run_inline()
        ):
            self._keep(_run_statement(self._connection, operation, seq_of_parameters, True))
            self._adapt_connection._end_turn_unless_in_transaction()
        else:
            await self._run(operation, seq_of_parameters, many=True)

    async def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapt = self._adapt_connection
        async with adapt._execute_mutex:
            locked = adapt._still_write_locked()
            queued = adapt._queue()
            try:
                driver = self._connection
                execute: Any = driver._execute  # untyped in aiosqlite
                outcome: _Outcome = await execute(
                    _run_statement, driver, operation, parameters, many
                )
            except Exception:
                # It ran and failed: the transaction (and its lock) may have ended with it.
                # A cancellation is no Exception: the statement may still be running on the
                # thread, so nothing runs inline until the next BEGIN IMMEDIATE completes.
                adapt._completed(queued, locked=locked)
                raise
            adapt._completed(queued, locked=locked or _takes_write_lock(operation))
        self._keep(outcome)

    def _keep(self, outcome: _Outcome) -> None:
        self._description, rows, self._rowcount, self._lastrowid = outcome
        if rows:
            self._rows = collections.deque(rows)
        else:
            self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted aiosqlite connection, with `OneHopCursor` for client cursors.

    A rollback right after a completed commit or rollback, with no cursor made since, is
    skipped: there is no transaction to undo. That is the pool's reset when a connection
    comes back after a commit (SQLAlchemy rolls back on return unless its own rollback
    just ran), otherwise one more hand-off per unit of work. Hazard: work sent to the
    aiosqlite connection itself (`driver_connection`) is not seen here; whoever begins a
    transaction that way must end it that way (`weflux.db.interrupt` only rolls back).
    """

    __slots__ = (
        "_busy_timeout_ms",
        "_closing",
        "_idle",
        "_inline_allowed",
        "_queued",
        "_settled",
        "_turn",
        "_turns",
        "_write_locked",
    )
    _connection: aiosqlite.Connection  # type: ignore[assignment]  # the base's protocol
    # mypy reads the base's attribute as exactly its class, not a subclass of it.
    _cursor_cls = OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # True only while the last thing done on the connection is a commit or rollback
        # that completed: a cancelled one may still be queued, and a statement (or any
        # cursor) may have begun a transaction.
        self._settled = False
        # Inline statements: whether they may run at all (`allow_inline`); whether
        # nothing is queued on aiosqlite's thread (`_idle`: the last thing queued there
        # completed; `_queued` counts what was queued, so that a completion tells whether
        # something was queued after it); and whether, besides, the transaction holds the
        # write lock (`_write_locked`).
        self._inline_allowed = False
        self._busy_timeout_ms = 0
        self._idle = False
        self._write_locked = False
        self._queued = 0
        # A graceful close (SQLAlchemy's `terminate` of an invalidated connection) is under way.
        self._closing = False
        # This process's turns at the database file's write lock (`OneHopDBAPI.connect`),
        # and the turn this connection holds, from its BEGIN IMMEDIATE to the end of that
        # transaction.
        self._turns: _WriterTurns | None = None
        self._turn: asyncio.Lock | None = None

    def allow_inline(self, busy_timeout_ms: int) -> None:
        """Let statements marked `INLINE` run inline here: only on a WAL database, where a
        transaction holding the write lock never waits for another lock (in rollback-journal
        mode a write that spills the page cache waits for readers). `busy_timeout_ms`: the
        connection's busy timeout, restored after an inline BEGIN's attempt without it."""
        self._inline_allowed = True
        self._busy_timeout_ms = int(busy_timeout_ms)

    async def _take_turn(self) -> bool:
        """Before a BEGIN IMMEDIATE: wait for this process's other writers on the file, in
        turn, at most the busy timeout; whether it took a turn (then `_end_turn` gives it
        back once the transaction ends). Only where statements may run inline (WAL)."""
        if self._turns is None or self._turn is not None or not self._inline_allowed:
            return False
        lock = self._turns.lock()
        if lock.locked():
            try:
                async with asyncio.timeout(self._busy_timeout_ms / 1000):
                    await lock.acquire()
            except TimeoutError:
                return False  # not waited for longer: the BEGIN waits in SQLite, as before
        else:
            await lock.acquire()  # free: taken without a turn of the event loop
        self._turn = lock
        return True

    def _end_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None and turn.locked():
            turn.release()

    def _end_turn_unless_in_transaction(self) -> None:
        if self._turn is not None and not _in_transaction(self._connection):
            self._end_turn()

    def _queue(self) -> int:
        """Before anything is queued on aiosqlite's thread: nothing inline until it has
        completed (and no statement but a BEGIN unless it leaves the write lock held)."""
        self._idle = self._write_locked = False
        self._queued += 1
        return self._queued

    def _completed(self, queued: int, *, locked: bool) -> None:
        """A hand-off (number `queued`) completed; `locked`: whether the write lock was
        held before it or taken by it."""
        if queued == self._queued:  # nothing queued since: the thread is idle
            self._idle = True
            self._write_locked = (
                locked and self._inline_allowed and _in_transaction(self._connection)
            )
            self._end_turn_unless_in_transaction()

    def _began_inline(self, operation: str) -> bool:
        """BEGIN (deferred, IMMEDIATE or EXCLUSIVE) on this thread, if that cannot wait.

        Only with nothing queued on aiosqlite's thread and no transaction open. A deferred
        BEGIN touches no file. IMMEDIATE tries for the write lock with no busy timeout: False
        when another writer holds it (the caller then takes the hand-off, which waits for
        it); the connection's busy timeout is restored at once.
        """
        statement = operation.strip().upper()
        if (
            statement not in _BEGIN
            or not (self._inline_allowed and self._idle)
            or self._execute_mutex.locked()
            or _in_transaction(self._connection)
        ):
            return False
        conn = self._connection._conn
        if statement not in _TAKE_WRITE_LOCK:
            _quietly(conn, operation)
            return True
        _quietly(conn, "PRAGMA busy_timeout = 0")
        try:
            _quietly(conn, operation)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return False
        finally:
            _quietly(conn, f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        self._write_locked = True
        return True

    def _still_write_locked(self) -> bool:
        """Whether the write lock is still held, before a hand-off (it keeps the flag only if
        so): not if the transaction ended under us, with no inline statement since to notice
        (SQLite rolls back by itself after some errors). A statement that begins a new
        transaction then (a SAVEPOINT, a deferred BEGIN) takes no write lock, and marked
        statements must not run inline in it."""
        return self._write_locked and _in_transaction(self._connection)

    def _may_run_inline(self) -> bool:
        if not self._write_locked or self._execute_mutex.locked():
            return False
        if not _in_transaction(self._connection):
            # Ended under us (SQLite rolls back by itself on some errors): no lock held.
            self._write_locked = False
            self._end_turn()
            return False
        return True

    async def abort(self) -> None:
        """Interrupt the running statement, if any, and roll back (`weflux.db.interrupt`).

        sqlite3's `interrupt()` is immediate, from any thread; the rollback is queued right
        behind the aborted statement. Nothing runs inline on the connection meanwhile.
        """
        self._queue()
        try:
            await self._connection.interrupt()
            await self._connection.rollback()
        finally:
            self._end_turn_unless_in_transaction()

    async def _terminate_graceful_close(self) -> None:
        self._end_turn()  # its transaction ends with it (a writer after it may hop)
        self._closing = True
        try:
            await super()._terminate_graceful_close()
        finally:
            self._closing = False

    def _terminate_force_close(self) -> None:
        """Stop aiosqlite's thread, unless a graceful close is under way.

        SQLAlchemy invalidates a connection whose statement was cancelled: its `terminate`
        awaits aiosqlite's `close` behind a shield, and when cancelled again meanwhile (a
        server stopping, a second timeout) it stops the thread at once. The shielded close
        goes on regardless, behind the statement still running: it closes the sqlite3
        connection (ending its transaction and write lock), then stops the thread itself,
        and waits for that. Stopped already, the thread never answers, and the close's task
        waited forever. Its own stop suffices.
        """
        self._end_turn()
        if not self._closing:
            super()._terminate_force_close()

    def cursor(self, server_side: bool = False) -> Any:
        self._settled = False
        if server_side:
            self._queue()  # its steps are hand-offs of their own, not tracked here
        return super().cursor(server_side)

    def commit(self) -> None:
        self._settled = False
        queued = self._queue()
        try:
            super().commit()
        finally:
            self._end_turn_unless_in_transaction()
        self._completed(queued, locked=False)
        self._settled = True

    def rollback(self) -> None:
        if self._settled:
            return
        queued = self._queue()
        try:
            super().rollback()
        finally:
            self._end_turn_unless_in_transaction()
        self._completed(queued, locked=False)
        self._settled = True

    def close(self) -> None:
        self._end_turn()
        self._queue()
        super().close()

    def create_function(self, *args: Any, **kw: Any) -> None:
        locked = self._still_write_locked()
        queued = self._queue()
        super().create_function(*args, **kw)
        self._completed(queued, locked=locked)

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        locked = self._still_write_locked()
        queued = self._queue()
        AsyncAdapt_aiosqlite_connection.isolation_level.fset(self, value)  # type: ignore[attr-defined]
        self._completed(queued, locked=locked)


# Deleted content is overwritten with zeros, not left in the file's free pages (an
# erasure must erase). Debian's SQLite is built with it on; python.org's, Homebrew's and
# most others are not, so every connection of this driver sets it (docs/lifecycle.md).
SECURE_DELETE = "PRAGMA secure_delete = ON"


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, connecting with `OneHopConnection`.

    Every connection it opens has `PRAGMA secure_delete` on (`SECURE_DELETE`), before
    SQLAlchemy or an engine's connect hook sees it.
    """

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        # Inline statements use the sqlite3 connection from the event loop's thread too
        # (never while its own thread works on it).
        kw["check_same_thread"] = False
        adapted = super().connect(*arg, **kw)
        driver = adapted._connection
        execute: Any = driver._execute  # untyped in aiosqlite
        try:
            await_(execute(_quietly, driver._conn, SECURE_DELETE))
        except Exception:
            await_(driver.close())
            raise
        connection = OneHopConnection(self, driver)
        if not kw.get("uri"):
            connection._turns = _turns_of(arg[0] if arg else kw.get("database"))
        return connection


def one_hop_dbapi() -> OneHopDBAPI:
    """The DBAPI module for `create_async_engine(..., module=)` on a `sqlite+aiosqlite` URL."""
    return OneHopDBAPI(aiosqlite, sqlite3)


def mark_inline_statements(engine: Engine) -> None:
    """Tell the cursors of `engine` (on this driver) which statements carry `INLINE`."""

    @event.listens_for(engine, "before_cursor_execute")
    def _mark(_conn: Any, cursor: Any, _sql: Any, _params: Any, context: Any, _many: bool) -> None:
        if context is not None and context.execution_options.get(INLINE):
            cursor._inline = True


def driver_options(url: str | URL) -> dict[str, Any]:
    """`create_async_engine` options that put a SQLite URL on this driver (none for others)."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"module": one_hop_dbapi()}
    return {}
