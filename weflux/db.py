"""Engines and units of work: one session per request or event, committed once at its end."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import ScopedSession, TenantScopeError, set_scope
from weflux.config import ConfigError
from weflux.pg_driver import ScopedBeginConnection, scoped_begin_dbapi
from weflux.sqlite_driver import INLINE, OneHopConnection, mark_inline_statements, one_hop_dbapi

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 15000
DEFAULT_STATEMENT_TIMEOUT = timedelta(seconds=30)
# How much longer than the server's statement timeout a serving process waits for any
# answer of PostgreSQL before it gives up on the connection (`answer_timeout`).
ANSWER_MARGIN = timedelta(seconds=5)
_AFTER_COMMIT = "weflux.after_commit"
# A connection's execution option, set by `begin_read_only`: see `_sqlite_engine`.
_READ_ONLY = "weflux_read_only"
# The (adapted) SQLite connection a session's transaction runs on, for `interrupt`.
_SQLITE_DRIVER = "weflux.sqlite_driver"

# session.info: what a committed write of whatsapp_accounts calls (`Database.channels_changed`),
# when it wrote what webhooks cache (see weflux.services.channel_cache).
CHANNELS_CHANGED_KEY = "weflux.channels_changed"

AfterCommit = Callable[[], Awaitable[None]]
ChannelsChanged = Callable[[frozenset[uuid.UUID] | None], Awaitable[None]]


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the session's transaction has committed (never on rollback).

    Events are published this way, so nobody hears of a change that did not happen.
    """
    after_commit_of(session.sync_session, callback)


def after_commit_of(session: Session, callback: AfterCommit) -> None:
    """`after_commit` from a synchronous session event (the session behind the unit)."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


async def run_after_commit(session: AsyncSession) -> None:
    """Run and clear the callbacks queued by `after_commit` (after a commit)."""
    callbacks: list[AfterCommit] = session.sync_session.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            log.exception("after-commit callback failed")


def discard_after_commit(session: AsyncSession) -> None:
    session.sync_session.info.pop(_AFTER_COMMIT, None)


async def settle(session: AsyncSession, *, commit: bool) -> bool:
    """End a unit of work: commit and run its after-commit callbacks, or roll back.

    False when the commit failed (the unit is then rolled back and the failure logged).
    """
    if not commit:
        discard_after_commit(session)
        await session.rollback()
        return True
    try:
        await session.commit()
    except Exception:
        log.exception("commit failed")
        discard_after_commit(session)
        await session.rollback()
        return False
    await run_after_commit(session)
    return True


async def begin_read_only(session: AsyncSession) -> None:
    """Begin the session's transaction as a reader, before its first statement.

    On SQLite a reader's transaction is deferred: it takes no lock, and in WAL mode it
    reads its snapshot while writers go on, so a long read never blocks a write. (Units
    that may write begin IMMEDIATE: see `_sqlite_engine`.) On PostgreSQL nothing changes.
    """
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        await session.connection(execution_options={_READ_ONLY: True})


async def begin_snapshot(connection: AsyncConnection) -> None:
    """Begin a read-only transaction that sees one consistent state of the whole database.

    PostgreSQL: REPEATABLE READ, READ ONLY, without a statement timeout (a long backup
    is one transaction). SQLite: a deferred reader, whose WAL snapshot is fixed at its
    first read, while writers go on.
    """
    if connection.dialect.name == "sqlite":
        await connection.execution_options(**{_READ_ONLY: True})
        await connection.begin()
        return
    await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    await connection.begin()
    await connection.execute(text("SET LOCAL statement_timeout = 0"))
    # Schemas before the tenancy migration (0007) let the owner see every workspace
    # only with this setting; later ones have a policy of the owner's own and ignore it.
    await connection.execute(text("SELECT set_config('app.all_workspaces', 'on', true)"))


async def interrupt(session: AsyncSession) -> None:
    """Abort the statement a SQLite session is running, if any, and roll back its transaction.

    aiosqlite runs statements in a thread of its own: cancelling the task that awaits one
    leaves the statement running (and the connection busy) until it ends by itself. And a
    statement abandoned mid-way is not finalised at once: its connection, even closed,
    keeps its transaction (and SQLite's write lock) until it is. So the rollback is queued
    right behind the aborted statement, before anything the cancellation queues.
    """
    connection: OneHopConnection | None = session.sync_session.info.get(_SQLITE_DRIVER)
    if connection is None:
        return
    with contextlib.suppress(sqlite3.Error, ValueError):  # closed meanwhile: nothing to undo
        await connection.abort()


def _serialized(name: str) -> Any:
    method = getattr(AsyncSession, name)

    @functools.wraps(method)
    async def call(self: SerializedSession, *args: Any, **kwargs: Any) -> Any:
        async with self._operation_lock:
            return await method(self, *args, **kwargs)

    return call


class SerializedSession(AsyncSession):
    """An AsyncSession whose operations wait their turn.

    GraphQL resolves sibling fields concurrently; a session (one connection) cannot
    run two statements at once, so concurrent resolvers of one request queue here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._operation_lock = asyncio.Lock()
        # The connection `connection()` gave for the transaction open then (see there).
        self._opened: tuple[SessionTransaction, AsyncConnection] | None = None

    exec = _serialized("exec")
    execute = _serialized("execute")
    scalar = _serialized("scalar")
    scalars = _serialized("scalars")
    get = _serialized("get")
    _flush = _serialized("flush")
    refresh = _serialized("refresh")
    delete = _serialized("delete")
    merge = _serialized("merge")
    commit = _serialized("commit")
    rollback = _serialized("rollback")
    _connection = _serialized("connection")

    # Two shortcuts for the hot paths (issue 11), each taken only while no operation of
    # the session is under way (so nothing can be mid-commit or mid-flush): what they
    # answer is then exactly what the full call would.

    async def connection(
        self,
        bind_arguments: Any = None,
        execution_options: Any = None,
        **kw: Any,
    ) -> AsyncConnection:
        """The transaction's connection (beginning it if need be). Asked again within the
        same open transaction, it is the one given before, without the lock and the
        greenlet (about 10 µs, two or three times per webhook). Not inside a savepoint:
        `begin_nested` emits its SAVEPOINT at the next call."""
        sync = self.sync_session
        opened = self._opened
        if (
            opened is not None
            and not (bind_arguments or execution_options or kw)
            and not self._operation_lock.locked()
            and opened[0] is sync.get_transaction()
            and opened[0].is_active
            and sync.get_nested_transaction() is None
        ):
            return opened[1]
        connection: AsyncConnection = await self._connection(
            bind_arguments=bind_arguments, execution_options=execution_options, **kw
        )
        transaction = sync.get_transaction()
        self._opened = (transaction, connection) if transaction is not None else None
        return connection

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        """Flush pending changes; with none pending, return at once (as `Session.flush`
        does then) without the lock and the greenlet (a webhook's Core writes leave the
        session clean)."""
        sync = self.sync_session
        if (
            objects is None
            and not self._operation_lock.locked()
            and not (sync.new or sync.deleted or sync.dirty)
        ):
            return
        await self._flush(objects)


@dataclass(frozen=True)
class RoleCheck:
    """What PostgreSQL says of the role the app connects as."""

    name: str
    superuser: bool
    bypass_rls: bool
    # The role owns the tables (or may act as their owner): it has its own policy, and
    # could switch row-level security off anyway.
    owns_tables: bool = False

    @property
    def subject_to_rls(self) -> bool:
        return not (self.superuser or self.bypass_rls or self.owns_tables)


def prepare_sqlite_file(url: URL) -> None:
    """Create the directory of a SQLite file (a fresh WEFLUX_VAR_DIR, say), which SQLite
    won't, and the file itself readable by its owner alone (mode 0600), as SQLite would
    not: it holds every message and contact in clear, and SQLite gives its `-wal` and
    `-shm` files the database's mode. An existing file keeps its mode."""
    name = url.database
    if url.get_backend_name() == "sqlite" and name and name != ":memory:":
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not name.startswith("file:"):  # a URI names the file otherwise
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


_BEGIN_INLINE = {INLINE: True}


def _sqlite_engine(url: URL, **kwargs: Any) -> AsyncEngine:
    prepare_sqlite_file(url)
    # One hand-off to aiosqlite's thread per statement, none for a statement marked
    # `weflux_inline` in a transaction holding the write lock (weflux.sqlite_driver).
    engine = create_async_engine(url, module=one_hop_dbapi(), **kwargs)
    mark_inline_statements(engine.sync_engine)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself, so SAVEPOINT and transactions behave.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        if cursor.fetchone()[0] == "wal":  # not for :memory: (see `allow_inline`)
            dbapi_connection.allow_inline(SQLITE_BUSY_TIMEOUT_MS)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE: take the write lock at the start. A deferred transaction that read
        # first cannot upgrade once another has written (SQLITE_BUSY_SNAPSHOT, no retry),
        # so concurrent read-then-write units of work would fail instead of waiting.
        # Read-only units (`begin_read_only`) never upgrade: they begin deferred. Both run
        # inline (no thread hand-off) when they cannot wait: weflux.sqlite_driver.
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN", execution_options=_BEGIN_INLINE)
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE", execution_options=_BEGIN_INLINE)

    return engine


@event.listens_for(ScopedSession, "after_rollback")
def _forget_after_commit(session: Session) -> None:
    # A transaction rolled back, whoever asked for it: what it queued for after its commit
    # must never run (a later commit of the same session would otherwise publish events
    # of changes that never happened). Savepoints roll back without this event.
    session.info.pop(_AFTER_COMMIT, None)


@event.listens_for(ScopedSession, "after_begin")
def _remember_sqlite_driver(session: Any, _transaction: Any, connection: Any) -> None:
    adapted = connection.connection.dbapi_connection
    if isinstance(adapted, OneHopConnection):  # every SQLite engine of `create_engine`
        session.info[_SQLITE_DRIVER] = adapted


def _postgres_engine(
    url: URL,
    *,
    pool_size: int,
    connect_timeout: float,
    statement_timeout: timedelta,
    answer_timeout: timedelta | None,
    **kwargs: Any,
) -> AsyncEngine:
    # A scoped unit's BEGIN and its scope's set_config in one round trip (weflux.pg_driver).
    engine = create_async_engine(
        url,
        module=scoped_begin_dbapi(),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        # The connection checked in last goes out first: units of work one after another
        # reuse one backend, its prepared statements and caches warm, and the others (a
        # warmed pool's, a burst's) wait for the next burst. First in, first out, a
        # warmed pool handed each webhook of a quiet minute the next of its 10 backends:
        # p99 across processes doubled (issue 11, goal 4).
        pool_use_lifo=True,
        connect_args={
            "timeout": connect_timeout,
            # asyncpg's bound on every round trip (a statement, BEGIN, COMMIT, the idle
            # ping, the cancel request it sends when the bound passes): a server that
            # vanished without a reset (a network partition, a host gone) otherwise holds
            # a request, a socket's read or a worker's job until TCP gives up, minutes
            # later. A connection that passed it is closed, never reused.
            "command_timeout": answer_timeout.total_seconds() if answer_timeout else None,
            "server_settings": {
                "application_name": "weflux",
                "statement_timeout": f"{int(statement_timeout.total_seconds() * 1000)}ms",
                "idle_in_transaction_session_timeout": "60s",
            },
        },
        **kwargs,
    )
    _ping_when_idle(engine)
    return engine


# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
IDLE_PING_AFTER = 2.0
_IDLE_SINCE = "weflux_idle_since"


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it sat idle past `IDLE_PING_AFTER`.

    SQLAlchemy's `pool_pre_ping` pings at every checkout: one more round trip for every
    unit of work (a webhook, a subscription's read; issue 11). A connection that a busy
    process reuses within milliseconds is not pinged; one that sat idle (a server
    restart, a killed backend, a network cut meanwhile) is, and if the ping fails the
    pool replaces it before anyone uses it (`DisconnectionError`: the pool retries the
    checkout with a new connection). A connection that breaks while in brisk use fails
    its statement once, the pool is invalidated (SQLAlchemy's disconnect handling) and
    the next unit of work gets a fresh one.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()
        if isinstance(dbapi_connection, ScopedBeginConnection):
            # Nothing waits for a BEGIN past its transaction (its commit or rollback has
            # dropped it already): never carried to the connection's next user.
            dbapi_connection.forget_begin()

    @event.listens_for(sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since <= IDLE_PING_AFTER:
            return  # new, or in brisk use
        try:
            alive = sync_engine.dialect.do_ping(dbapi_connection)
        except Exception:
            alive = False
        if not alive:
            raise DisconnectionError("a pooled connection did not answer its ping")


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout: float = 5.0,
    statement_timeout: timedelta = DEFAULT_STATEMENT_TIMEOUT,
    answer_timeout: timedelta | None = None,
) -> AsyncEngine:
    """`answer_timeout` (PostgreSQL): how long any round trip may wait for the server's
    answer; None (maintenance: backups, restores, migrations run long statements) waits."""
    # hide_parameters: SQL errors and logs never carry the values (message texts,
    # sealed credentials, emails), only the statements.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, hide_parameters=True)
    return _postgres_engine(
        parsed,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        answer_timeout=answer_timeout,
        hide_parameters=True,
    )


async def _close(session: AsyncSession) -> None:
    """Close a unit of work's session.

    With no transaction left (committed or rolled back: the usual end) closing does no
    I/O, so it is done in place; `AsyncSession`'s own exit runs the close in a task of
    its own behind `asyncio.shield` (two turns of the event loop, about 15 µs; issue
    11), which only a close that still has a connection to give back needs.
    """
    if session.sync_session.get_transaction() is None:
        session.sync_session.close()
    else:
        await session.__aexit__(None, None, None)  # SQLAlchemy's cancellation-safe close


class Database:
    """The app's engine and its session factory.

    `maintenance=True` marks a handle on the schema owner's URL
    (WEFLUX_DATABASE_MIGRATION_URL), the only one that may open `all_workspaces`
    sessions: on PostgreSQL the app's own role sees one workspace per transaction.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        maintenance: bool = False,
        statement_timeout: timedelta = DEFAULT_STATEMENT_TIMEOUT,
        answer_timeout: timedelta | None = None,
    ) -> None:
        self.url = make_url(url)
        self.maintenance = maintenance
        self.engine = create_engine(
            url,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            answer_timeout=answer_timeout,
        )
        self.sessionmaker = async_sessionmaker(
            self.engine,
            class_=SerializedSession,
            sync_session_class=ScopedSession,
            expire_on_commit=False,
            info={CHANNELS_CHANGED_KEY: self._channels_changed},
        )
        # Units that only read (a live event's, opened lazily where no `await` can mark
        # them as `begin_read_only` does): on SQLite they begin deferred, so they never
        # take the write lock from, nor wait behind, the units that write.
        self.reader_engine = self.engine.execution_options(**{_READ_ONLY: True})
        self.reader_sessionmaker = async_sessionmaker(
            self.reader_engine,
            class_=SerializedSession,
            sync_session_class=ScopedSession,
            expire_on_commit=False,
            info={CHANNELS_CHANGED_KEY: self._channels_changed},
        )
        # Called after a unit of work that wrote whatsapp_accounts committed (the
        # runtime's channel cache evicts, here and through the broker).
        # Given the numbers written, or None when it cannot tell (any may have changed).
        self.channels_changed: ChannelsChanged | None = None

    async def _channels_changed(self, ids: frozenset[uuid.UUID] | None) -> None:
        if self.channels_changed is not None:
            await self.channels_changed(ids)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @asynccontextmanager
    async def session(
        self,
        org_id: uuid.UUID | None = None,
        *,
        all_workspaces: str | None = None,
        webhook_event: uuid.UUID | tuple[uuid.UUID, ...] | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """One unit of work, committed at its end and rolled back on error.

        `org_id` confines it to one workspace. `webhook_event` names the one stored
        webhook event it may read and write (a tuple: those events, a queue worker's
        batch). `all_workspaces="<why>"` lets it cross workspaces: maintenance only, on
        a `maintenance` handle (the app crosses workspaces through weflux.auth.crossings).
        """
        if all_workspaces and not self.maintenance:
            raise TenantScopeError(
                "all_workspaces is for maintenance, on the schema owner's URL "
                "(WEFLUX_DATABASE_MIGRATION_URL); the app crosses workspaces through "
                "weflux.auth.crossings"
            )
        session = self.sessionmaker()
        try:
            set_scope(session, org_id, all_workspaces=all_workspaces, webhook_event=webhook_event)
            if all_workspaces:
                log.debug("cross-workspace session", extra={"reason": all_workspaces})
            try:
                yield session
                await session.commit()
            except BaseException:
                discard_after_commit(session)
                await session.rollback()
                raise
            await run_after_commit(session)
        finally:
            await _close(session)

    async def ping(self, within: float = 3.0) -> None:
        """Raise unless the database answers within `within` seconds."""
        async with asyncio.timeout(within), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def role_check(self) -> RoleCheck | None:
        """On PostgreSQL: whether the app's role is subject to row-level security."""
        if self.dialect != "postgresql":
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_user, rolsuper, rolbypassrls, "
                        "coalesce((SELECT pg_has_role(current_user, c.relowner, 'MEMBER') "
                        "FROM pg_class c WHERE c.oid = to_regclass('public.organizations')), "
                        "false) FROM pg_roles WHERE rolname = current_user"
                    )
                )
            ).one()
        return RoleCheck(name=row[0], superuser=row[1], bypass_rls=row[2], owns_tables=row[3])

    async def warm_pool(self) -> int:
        """PostgreSQL: open the pool's connections now, before the first requests; how
        many it holds open (idle) after.

        The pool otherwise opens a connection when concurrent units of work first need
        it: at the first burst, each such unit waits for a new backend (5-48 ms measured
        under load, with its CPU on the event loop the acknowledgements share) and then
        prepares its statements on it; that cascade made the ack p99 of `bench.webhook`
        at 100/s (issue 11). The pool keeps `pool_size` connections once opened; this
        reaches that state at start. Best effort: a connection refused (the server's
        `max_connections`) is opened later, on demand, as before."""
        if self.dialect != "postgresql":
            return 0
        pool: Any = self.engine.sync_engine.pool
        # Held all at once (those already open among them), so that `pool_size` are open.
        wanted = pool.size() - pool.checkedout()
        opened = await asyncio.gather(
            *(self.engine.connect().start() for _ in range(max(0, wanted))),
            return_exceptions=True,
        )
        for connection in opened:
            if isinstance(connection, BaseException):
                log.warning(
                    "could not open a pooled connection at start; it opens on demand",
                    extra={"error": type(connection).__name__},
                )
            else:
                await connection.close()  # back to the pool, open
        return sum(not isinstance(c, BaseException) for c in opened)

    async def dispose(self) -> None:
        await self.engine.dispose()


async def maintenance_database(url: str) -> Database:
    """A maintenance handle (`all_workspaces` sessions) on the schema owner's URL.

    Refused on PostgreSQL when that URL's role is held to one workspace by row-level
    security: maintenance would silently see nothing.
    """
    db = Database(url, pool_size=2, maintenance=True)
    role = await db.role_check()
    if role is not None and role.subject_to_rls:
        await db.dispose()
        raise ConfigError(
            f"maintenance connects as `{role.name}`, which row-level security holds to one "
            "workspace: set WEFLUX_DATABASE_MIGRATION_URL to the schema owner's URL"
        )
    return db
