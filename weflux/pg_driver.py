"""PostgreSQL through asyncpg: a transaction's BEGIN and its scope in one round trip.

SQLAlchemy's asyncpg adapter sends BEGIN (asyncpg's `Transaction.start`, a simple query)
just before a transaction's first statement, in a round trip of its own; the tenant
scope's `SELECT set_config(...)` (weflux.auth.scoping) then took a second one, before the
unit's real first statement: two round trips of every scoped unit of work (issue 11).

Here the adapter, subclassed (not copied, not patched), takes a statement to run with its
next BEGIN (`begin_with`): when the transaction's first statement comes, `BEGIN; <the
statement>` goes as one simple query (PostgreSQL's simple-query protocol runs several
statements of one message in order, so the BEGIN opens the transaction the scope is set
in, before any other statement of it). A simple query takes no parameters: the statement
is built by the caller from strictly validated values only (`scoping._scope_sql`: UUIDs
re-rendered from their integer, never text from a request).

What is pending lives only as long as the transaction that asked for it: the transaction's
first statement takes it; a commit or rollback (SQLAlchemy ends each transaction with
one, even when the driver never began: a unit without statements) drops it, and so does
the pool's reset when the connection is given back. So no later user of a pooled
connection (another unit, `engine.connect()`, the idle ping) ever begins with someone
else's scope. If `BEGIN; <statement>` fails part way (a lock wait cancelled by the
statement timeout, a cancelled task), the server may hold a transaction, open or aborted:
it is counted as begun before the query is sent, so the unit's rollback (or the pool's
reset) ends it with ROLLBACK (harmless when nothing had begun).

A live event's own read (weflux.gql.context's `EventUnit`) goes past SQLAlchemy's
execution: `ReadTransaction` begins a pooled connection's transaction the same way, with
the reader's scope, runs prepared SELECTs on asyncpg and leaves the ROLLBACK to the pool's
reset (see its docstring). A webhook's one statement does the same inside its Session's
transaction (`fetch_in_transaction`): the Session's connection, BEGIN with the scope the
Session's `after_begin` hook left waiting, the prepared statement; COMMIT and ROLLBACK stay
the Session's.

The BEGIN says what asyncpg's would: the connection's isolation level, READ ONLY,
DEFERRABLE (backups' `begin_snapshot`). Engines get the adapter with
`create_async_engine(url, module=scoped_begin_dbapi())`; the URL stays
`postgresql+asyncpg://`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.util.concurrency import await_, greenlet_spawn

# SQLAlchemy's names of the levels (its dialect's `_isolation_lookup`), as SQL.
_ISOLATION_LEVELS = {
    "read_committed": "READ COMMITTED",
    "repeatable_read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}


class _Begun:
    """A transaction opened by `BEGIN; <statement>`: ended as asyncpg ends its own."""

    __slots__ = ("_connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def commit(self) -> None:
        await self._connection.execute("COMMIT;")

    async def rollback(self) -> None:
        await self._connection.execute("ROLLBACK;")


class ScopedBeginConnection(AsyncAdapt_asyncpg_connection):
    """SQLAlchemy's asyncpg connection, whose next BEGIN may carry a statement."""

    __slots__ = ("_begin_with",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._begin_with: str | None = None

    def begin_with(self, statement: str) -> bool:
        """Send `statement` (no parameters) with the BEGIN of the transaction about to
        begin. False when it cannot: the driver's transaction has begun already, or the
        connection is in autocommit (the caller then runs it itself)."""
        if self._transaction is not None or self.isolation_level == "autocommit":
            return False
        self._begin_with = statement
        return True

    async def _start_transaction(self) -> None:
        statement, self._begin_with = self._begin_with, None
        if statement is None or self.isolation_level == "autocommit":
            await super()._start_transaction()  # type: ignore[no-untyped-call]
            return
        await self.begin_now(statement)

    async def begin_now(self, statement: str) -> None:
        """Send `BEGIN; <statement>` now (no parameters), in one round trip."""
        if self._transaction is not None:
            raise RuntimeError("this connection's transaction has begun already")
        # Begun as far as anyone ending it is concerned, before the query goes: see the
        # module's docstring.
        connection: asyncpg.Connection = self._connection
        self._transaction = _Begun(connection)  # type: ignore[assignment]
        try:
            await connection.execute(f"{self._begin()}; {statement}")
        except Exception as error:
            self._handle_exception(error)

    def forget_begin(self) -> None:
        """Drop what is pending for the next BEGIN (the pool's check-in: see db.py)."""
        self._begin_with = None

    def _begin(self) -> str:
        """The BEGIN asyncpg's `Transaction.start` would send for this connection."""
        begin = "BEGIN"
        if self.isolation_level is not None:
            begin += " ISOLATION LEVEL " + _ISOLATION_LEVELS[self.isolation_level]
        if self.readonly:
            begin += " READ ONLY"
        if self.deferrable:
            begin += " DEFERRABLE"
        return begin

    def rollback(self) -> None:
        self._begin_with = None
        super().rollback()  # type: ignore[no-untyped-call]

    def commit(self) -> None:
        self._begin_with = None
        super().commit()  # type: ignore[no-untyped-call]

    async def _async_ping(self) -> None:
        # One round trip: a simple query outside any transaction (SQLAlchemy's own wraps
        # a prepared `;` in BEGIN and ROLLBACK, three, for pgbouncer's transaction mode).
        if self._transaction is None:
            connection: asyncpg.Connection = self._connection
            await connection.execute("SELECT 1")
        else:
            await super()._async_ping()  # type: ignore[no-untyped-call]


class ScopedBeginDbapi(AsyncAdapt_asyncpg_dbapi):
    """SQLAlchemy's asyncpg DBAPI module, connecting with `ScopedBeginConnection`."""

    def connect(self, *arg: Any, **kw: Any) -> ScopedBeginConnection:
        creator_fn = kw.pop("async_creator_fn", self.asyncpg.connect)
        cache_size = kw.pop("prepared_statement_cache_size", 100)
        name_func = kw.pop("prepared_statement_name_func", None)
        connection: ScopedBeginConnection = await_(
            ScopedBeginConnection.create(
                self,
                creator_fn(*arg, **kw),
                prepared_statement_cache_size=cache_size,
                prepared_statement_name_func=name_func,
            )
        )
        return connection


def scoped_begin_dbapi() -> ScopedBeginDbapi:
    return ScopedBeginDbapi(asyncpg)  # type: ignore[no-untyped-call]


def begin_with(connection: Connection, statement: str) -> bool:
    """Have `statement` sent with the BEGIN of `connection`'s transaction, which has not
    reached the driver yet (see `ScopedBeginConnection.begin_with`). False when it cannot
    (another driver, or the driver's transaction has begun): run it yourself then."""
    adapted = connection.connection.dbapi_connection
    return isinstance(adapted, ScopedBeginConnection) and adapted.begin_with(statement)


# -- a scoped read without SQLAlchemy's execution ----------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binds: tuple[Callable[[Any], Any] | None, ...]
    # (column's index, SQLAlchemy's result processor) for the columns that have one.
    results: tuple[tuple[int, Callable[[Any], Any]], ...]


class PreparedSelect:
    """A Core SELECT (or a write with RETURNING) compiled once for asyncpg, run as a
    prepared statement on a `ReadTransaction` or by `fetch_in_transaction`: its SQL, the
    order of its parameters, and SQLAlchemy's own bind and result processing of each (so
    a row holds the values, and their types, that SQLAlchemy's execution of the same
    statement would give). A statement that needs more of SQLAlchemy's execution (a
    Python-side column default to compute, an expanding `IN`) is refused."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            compiled: Any = self.statement.compile(dialect=dialect)
            if (
                compiled.insert_prefetch
                or compiled.update_prefetch
                or compiled.literal_execute_params
                or compiled.post_compile_params
            ):
                raise ValueError("a prepared statement needs SQLAlchemy's execution")
            names = tuple(compiled.positiontup or ())
            processors = compiled._bind_processors
            binds = compiled.binds
            self._compiled = _Compiled(
                sql=compiled.string,
                names=names,
                # A value the statement holds itself (a literal); a required parameter
                # has none, so a read without it fails (KeyError), never runs unbound.
                defaults={
                    name: binds[name].effective_value for name in names if not binds[name].required
                },
                binds=tuple(processors.get(name) for name in names),
                results=tuple(
                    (index, process)
                    for index, column in enumerate(compiled._result_columns)
                    if (process := column.type._cached_result_processor(dialect, None)) is not None
                ),
            )
        return self._compiled

    def args(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        """The compiled form and its positional arguments for `params`, processed as
        SQLAlchemy would (a required parameter missing: KeyError)."""
        compiled = self.compiled(dialect)
        return compiled, [
            value if bind is None else bind(value)
            for bind, value in zip(
                compiled.binds,
                (
                    params[name] if name in params else compiled.defaults[name]
                    for name in compiled.names
                ),
                strict=True,
            )
        ]


def _row(compiled: _Compiled, record: Any) -> tuple[Any, ...]:
    values = list(record)
    for index, process in compiled.results:
        values[index] = process(values[index])
    return tuple(values)


async def fetch_in_transaction(
    connection: AsyncConnection, statement: PreparedSelect, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """The rows of `statement` run on `connection` (a Session's, in its transaction),
    processed as SQLAlchemy's execution of it would give them, without that execution
    (issue 11: a webhook's one statement; about 0.4 ms of CPU of SQLAlchemy's and the
    ORM's around a round trip).

    Fails closed on the scope: the transaction must have begun on the driver, or have a
    statement (the Session's scope, `ScopedSession`'s `after_begin` hook) waiting for its
    BEGIN, which goes with it as SQLAlchemy's execution would send it (`BEGIN; <scope>`,
    one round trip); a connection with neither is refused before anything is sent. The
    engine's `before_cursor_execute` listeners hear the statement; an error (a
    cancellation too) is handled by the connection as SQLAlchemy's execution handles it
    (`DBAPIError` and its subclasses, parameters hidden as the engine hides them, the
    `handle_error` hooks; a disconnection or a cancellation invalidates the connection).
    """
    sync = connection.sync_connection
    if sync is None or not sync.in_transaction():
        raise RuntimeError("fetch_in_transaction: the connection's transaction has not begun")
    adapted = sync.connection.dbapi_connection
    if not isinstance(adapted, ScopedBeginConnection):
        raise TypeError("fetch_in_transaction needs weflux.pg_driver's connection")
    if adapted._transaction is None and adapted._begin_with is None:
        raise RuntimeError("fetch_in_transaction: no scope waits for the transaction's BEGIN")
    dialect = sync.dialect
    compiled, args = statement.args(dialect, params)
    if sync._has_events or sync.engine._has_events:
        sync.dispatch.before_cursor_execute(sync, None, compiled.sql, args, None, False)
    try:
        async with adapted._execute_mutex:
            if adapted._transaction is None:
                await adapted._start_transaction()
            # SQLAlchemy's statement cache of the connection (its prepared statements).
            prepared, _attributes = await adapted._prepare(
                compiled.sql, getattr(dialect, "_invalidate_schema_cache_asof", 0)
            )
            records = await prepared.fetch(*args)
    except BaseException as error:
        await _raise_as_executed(sync, adapted, error, compiled.sql, args)
    return [_row(compiled, record) for record in records]


async def _raise_as_executed(
    sync: Connection,
    adapted: ScopedBeginConnection,
    error: BaseException,
    statement: str,
    args: list[Any],
) -> NoReturn:
    """Raise `error` as SQLAlchemy's execution of `statement` on `sync` would."""
    if isinstance(error, Exception):
        try:
            adapted._handle_exception(error)  # asyncpg's error as the DBAPI's
        except Exception as translated:
            error = translated
    await greenlet_spawn(_handle_as_executed, sync, error, statement, args)
    raise AssertionError("unreachable: _handle_dbapi_exception raises")  # pragma: no cover


def _handle_as_executed(
    sync: Connection, error: BaseException, statement: str, args: list[Any]
) -> NoReturn:
    # Raised again here, in the greenlet: the handler reads the error being handled.
    try:
        raise error
    except BaseException as handled:
        sync._handle_dbapi_exception(handled, statement, args, None, None)
    raise AssertionError("unreachable: _handle_dbapi_exception raises")  # pragma: no cover


class ReadTransaction:
    """One read on a pooled connection: `BEGIN; <scope>` in one round trip, prepared
    SELECTs, then ROLLBACK and the connection back to the pool (`end`).

    No Session and no SQLAlchemy execution around the round trips (issue 11: they were
    about two thirds of a live event's read CPU): the pool's connection, its checkout
    (the idle ping) and its check-in are SQLAlchemy's, the rest is asyncpg. Fails closed:
    no statement runs before the BEGIN carrying the scope has been answered, and the
    transaction counts as begun before that BEGIN is sent, so `end` (the pool's reset:
    ROLLBACK) closes it whatever happened, a cancellation included; a connection whose
    ROLLBACK fails or is cancelled is invalidated by the pool, never reused. Errors are
    raised as SQLAlchemy's own (`DBAPIError`, parameters hidden), and a disconnection
    invalidates the pool as SQLAlchemy's execution does.
    """

    __slots__ = ("_adapted", "_dialect", "_pool", "_pooled")

    def __init__(self, pooled: PoolProxiedConnection, engine: AsyncEngine) -> None:
        self._pooled: PoolProxiedConnection | None = pooled
        self._dialect = engine.dialect
        self._pool = engine.sync_engine.pool
        adapted = pooled.dbapi_connection
        if not isinstance(adapted, ScopedBeginConnection):
            raise TypeError("a read transaction needs weflux.pg_driver's connection")
        self._adapted: ScopedBeginConnection = adapted

    @classmethod
    async def begin(cls, engine: AsyncEngine, scope: str) -> ReadTransaction:
        """A pooled connection of `engine` in a transaction begun with `scope` (a
        statement without parameters: `ReadScope.begin_sql`)."""
        pooled = await engine.raw_connection()
        try:
            read = cls(pooled, engine)
        except BaseException:
            await _give_back(pooled)
            raise
        try:
            await read._adapted.begin_now(scope)
        except Exception as error:
            await read._fail(error, "BEGIN")
        except BaseException:
            await read.end()
            raise
        return read

    async def fetch(
        self, select: PreparedSelect, params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row of `select` with `params`, processed as SQLAlchemy would."""
        if self._pooled is None:
            raise RuntimeError("this read transaction has ended")
        compiled, args = select.args(self._dialect, params)
        adapted = self._adapted
        try:
            # SQLAlchemy's statement cache of the connection (its prepared statements).
            prepared, _attributes = await adapted._prepare(  # type: ignore[no-untyped-call]
                compiled.sql, getattr(self._dialect, "_invalidate_schema_cache_asof", 0)
            )
            rows = await prepared.fetch(*args)
        except Exception as error:
            await self._fail(error, compiled.sql)
        if not rows:
            return None
        return _row(compiled, rows[0])

    async def _fail(self, error: Exception, statement: str) -> NoReturn:
        """Raise `error` as SQLAlchemy's execution would; on a disconnection the pool is
        invalidated (this connection closed, older ones replaced at their checkout) and
        the connection given back, else it is given back by `end`."""
        dialect = self._dialect
        dbapi_error = dialect.loaded_dbapi.Error
        try:
            self._adapted._handle_exception(error)
        except dbapi_error as translated:
            gone = dialect.is_disconnect(translated, self._pooled, None)
            pooled = self._pooled
            if gone and pooled is not None:
                self._pooled = None
                await greenlet_spawn(_drop, self._pool, pooled, translated)
            raise sa_exc.DBAPIError.instance(
                statement,
                None,
                translated,
                dbapi_error,
                hide_parameters=True,
                dialect=dialect,
                connection_invalidated=gone,
            ) from translated
        raise AssertionError("unreachable: _handle_exception raises")  # pragma: no cover

    async def end(self) -> None:
        """ROLLBACK, and the connection back to the pool (idempotent)."""
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            await _give_back(pooled)


def _drop(pool: Pool, pooled: PoolProxiedConnection, error: BaseException) -> None:
    pool._invalidate(pooled, error)
    pooled.close()


async def _give_back(pooled: PoolProxiedConnection) -> None:
    # The pool's check-in resets the connection: the adapter's rollback sends ROLLBACK
    # for a transaction begun (or counted as begun); a reset that fails or is cancelled
    # invalidates the connection (SQLAlchemy's `_finalize_fairy`).
    await greenlet_spawn(pooled.close)
