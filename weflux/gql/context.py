"""The per-request GraphQL context: who calls, the unit of work, fresh DataLoaders."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.principal import Principal, restricted_agent
from weflux.auth.scoping import ReadScope, ScopedRead, restrict_to_agent, set_scope
from weflux.client_ip import request_meta
from weflux.config import Settings
from weflux.db import Database
from weflux.errors import Unauthenticated
from weflux.gql.budgets import CostBudgets
from weflux.gql.event_memo import EventMemo
from weflux.gql.loaders import Loaders
from weflux.mail.mailer import Mailer
from weflux.pg_driver import PreparedSelect, ReadTransaction
from weflux.realtime.broker import Broker
from weflux.realtime.counts import CountsFeed
from weflux.realtime.hub import Hub
from weflux.services.audit import RequestMeta
from weflux.services.channels import Services as ChannelServices
from weflux.throttle.ratelimit import RateLimiter

if TYPE_CHECKING:
    from weflux.runtime import Runtime

# A subscription runs in its own task: the unit of work of the event being delivered,
# and its fresh DataLoaders, live in the task's context, never shared between operations.
_event_session: ContextVar[EventUnit | AsyncSession | None] = ContextVar(
    "weflux_event_session", default=None
)
_event_loaders: ContextVar[Loaders | None] = ContextVar("weflux_event_loaders", default=None)


@dataclass(eq=False, slots=True)
class Context:
    """Built once per HTTP request (and once per WebSocket connection).

    Slotted: a socket keeps its context for its life, and its 18 fields in slots take
    about 180 bytes less than in an instance dict.
    """

    request: HTTPConnection
    settings: Settings
    db: Database
    authenticator: Authenticator
    broker: Broker
    password_guard: PasswordGuard
    channel_services: ChannelServices
    limiter: RateLimiter
    cost_budgets: CostBudgets
    hub: Hub
    event_memo: EventMemo
    inbox_counts: CountsFeed
    meta: RequestMeta
    principal: Principal | None = None
    session: AsyncSession | None = None
    connection_params: dict[str, object] | None = None
    mailer: Mailer | None = None
    # Made on first use: a socket's own are rarely used (each operation has fresh ones).
    _loaders: Loaders | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(
        cls,
        request: HTTPConnection,
        runtime: Runtime,
        principal: Principal | None,
        *,
        session: AsyncSession | None = None,
        mailer: Mailer | None = None,
    ) -> Context:
        """The context of `request` (an HTTP request or a socket) served by `runtime`."""
        return cls(
            request=request,
            settings=runtime.settings,
            db=runtime.db,
            authenticator=runtime.authenticator,
            broker=runtime.broker,
            password_guard=runtime.password_guard,
            channel_services=runtime.channel_services,
            limiter=runtime.limiter,
            cost_budgets=runtime.cost_budgets,
            hub=runtime.hub,
            event_memo=runtime.event_memo,
            inbox_counts=runtime.inbox_counts,
            meta=request_meta(request, runtime.trusted_proxies),
            principal=principal,
            session=session,
            mailer=mailer,
        )

    def new_loaders(self) -> Loaders:
        """Fresh DataLoaders that read through whichever unit of work is current (`unit`)."""
        return Loaders(lambda: self.unit)

    @property
    def loaders(self) -> Loaders:
        current = _event_loaders.get()
        if current is not None:
            return current
        if self._loaders is None:
            self._loaders = self.new_loaders()
        return self._loaders

    @contextlib.asynccontextmanager
    async def event_unit(self, loaders: Loaders | None = None) -> AsyncIterator[None]:
        """A unit of work for one live event, scoped as the caller's queries are.

        Lazy: most deliveries find the event already loaded for their visibility class,
        and then no session is opened at all.
        """
        unit = EventUnit(self)
        session_token = _event_session.set(unit)
        loaders_token = _event_loaders.set(loaders or self.new_loaders())
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                _event_session.reset(session_token)
                _event_loaders.reset(loaders_token)
            await unit.close()

    @contextlib.asynccontextmanager
    async def operation_unit(self) -> AsyncIterator[AsyncSession]:
        """A unit of work for one operation sent over the socket, with fresh DataLoaders.

        Scoped as the caller's queries are. Whoever answers the operation settles it
        (`weflux.gql.socket`); closing it rolls back whatever was not committed.
        """
        session = _scoped_session(self)
        session_token = _event_session.set(session)
        loaders_token = _event_loaders.set(self.new_loaders())
        try:
            yield session
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                _event_session.reset(session_token)
                _event_loaders.reset(loaders_token)
            await session.close()

    @property
    def actor(self) -> Principal:
        """The authenticated caller (the edge guarantees one on every operation)."""
        if self.principal is None:
            raise Unauthenticated("Authentication required")
        return self.principal

    async def close_socket(self, code: int, reason: str) -> None:
        """Close the WebSocket this context serves (live operations only)."""
        if not isinstance(self.request, WebSocket):
            raise TypeError("not a WebSocket context")
        await self.request.close(code=code, reason=reason)

    @property
    def event_reader(self) -> EventUnit:
        """The live event's unit of work (inside `event_unit` only)."""
        event = _event_session.get()
        if not isinstance(event, EventUnit):
            raise RuntimeError("no live event's unit in this context")
        return event

    @property
    def unit(self) -> AsyncSession:
        """The request's (or the live event's) session, scoped to the caller's workspace."""
        event = _event_session.get()
        if isinstance(event, EventUnit):
            return event.session()
        session = event or self.session
        if session is None:
            raise RuntimeError("no database session in this context")
        return session


def _scoped_session(context: Context, *, reader: bool = False) -> AsyncSession:
    """A new session of the caller's workspace (and, for an Agent, visibility); a
    `reader`'s begins as `begin_read_only` begins (on SQLite: deferred, no write lock)."""
    principal = context.actor
    session = (context.db.reader_sessionmaker if reader else context.db.sessionmaker)()
    set_scope(session, principal.org_id)
    if (agent := restricted_agent(principal)) is not None:
        restrict_to_agent(session, agent)
    return session


def read_scope(principal: Principal) -> ReadScope:
    """The scope of `principal`'s reads, as `_scoped_session` gives a session."""
    return ReadScope(principal.org_id, restricted_agent(principal))


# Each Core read compiled once for asyncpg (weflux.pg_driver), by statement.
_PREPARED: weakref.WeakKeyDictionary[Any, PreparedSelect] = weakref.WeakKeyDictionary()


def _prepared(statement: Any) -> PreparedSelect:
    prepared = _PREPARED.get(statement)
    if prepared is None:
        prepared = _PREPARED[statement] = PreparedSelect(statement)
    return prepared


class EventUnit:
    """A live event's unit of work, opened on first use and rolled back at the end.

    Two ways in, each opened on first use and both ended by `close`: `fetch`, one scoped
    Core read without a Session (the event's own row: on PostgreSQL a `ReadTransaction`,
    BEGIN with the scope, a prepared SELECT and ROLLBACK; on SQLite a reader's
    connection), and `session()`, for what the frame's fields load beyond it.
    """

    __slots__ = ("_connection", "_context", "_session", "_transaction")

    def __init__(self, context: Context) -> None:
        self._context = context
        self._session: AsyncSession | None = None
        self._transaction: ReadTransaction | None = None
        self._connection: AsyncConnection | None = None

    async def fetch(self, read: ScopedRead, values: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row of `read` with `values`, as the caller may see it: the
        statement and its scope's values are the scoping layer's for the caller (and on
        PostgreSQL row-level security has the workspace from the transaction's BEGIN)."""
        scope = read_scope(self._context.actor)
        statement = read.statement(scope)
        params = {**values, **scope.params()}
        db = self._context.db
        if db.dialect == "postgresql":
            if self._transaction is None:
                self._transaction = await ReadTransaction.begin(db.engine, scope.begin_sql())
            try:
                return await self._transaction.fetch(_prepared(statement), params)
            except Exception:
                # Ended at once, so a read again (`SharedEvent.load` retries) begins anew
                # rather than in an aborted transaction.
                transaction, self._transaction = self._transaction, None
                await transaction.end()
                raise
        if self._connection is None:
            # A reader's: deferred on SQLite, no write lock (see `session`).
            self._connection = await db.reader_engine.connect()
        return (await self._connection.execute(statement, params)).first()

    def session(self) -> AsyncSession:
        if self._session is None:
            # A reader's: on SQLite a live event never takes the write lock, which would
            # queue every visibility class's read behind the webhooks (and them behind it).
            self._session = _scoped_session(self._context, reader=True)
        return self._session

    async def close(self) -> None:
        """End the unit: its transaction is rolled back (live events only read).

        `close()` alone, not `rollback()` first: a rollback expires every row the unit
        loaded, and those rows outlive it (a replay page, DataLoaders shared by the
        subscribers of one event); `close()` detaches them with their values intact.
        """
        transaction, self._transaction = self._transaction, None
        connection, self._connection = self._connection, None
        session, self._session = self._session, None
        try:
            if transaction is not None:
                await transaction.end()
        finally:
            try:
                if connection is not None:
                    await connection.close()
            finally:
                if session is not None:
                    await session.close()
