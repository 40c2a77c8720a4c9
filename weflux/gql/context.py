"""The per-request GraphQL context: who calls, the unit of work, fresh DataLoaders."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from weflux.auth.principal import Authenticator, Principal
from weflux.config import Settings
from weflux.db import Database
from weflux.services.audit import RequestMeta

if TYPE_CHECKING:
    from weflux.gql.loaders import Loaders
    from weflux.services.channels import Services as ChannelServices


# A subscription runs in its own task: the unit of work of the event being delivered,
# and its fresh DataLoaders, live in the task's context, never shared between operations.
_event_session: ContextVar[AsyncSession | None] = ContextVar("weflux_event_session", default=None)
_event_loaders: ContextVar[Loaders | None] = ContextVar("weflux_event_loaders", default=None)


@dataclass(eq=False)
class Context:
    """Built once per HTTP request (and once per WebSocket connection)."""

    request: HTTPConnection
    settings: Settings
    db: Database
    authenticator: Authenticator
    meta: RequestMeta
    principal: Principal | None = None
    session: AsyncSession | None = None
    connection_params: dict[str, object] | None = None
    _loaders: Loaders = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from weflux.gql.loaders import Loaders

        self._loaders = Loaders(self)

    @property
    def loaders(self) -> Loaders:
        return _event_loaders.get() or self._loaders

    @contextlib.asynccontextmanager
    async def event_unit(self, loaders: Loaders | None = None) -> AsyncIterator[AsyncSession]:
        """A unit of work for one live event, scoped as the caller's queries are."""
        from weflux.auth.permissions import Permission
        from weflux.auth.scoping import restrict_to_agent
        from weflux.gql.loaders import Loaders

        principal = self.actor
        async with self.db.session(principal.org_id) as session:
            if not principal.can(Permission.SEE_ALL_CONVERSATIONS):
                restrict_to_agent(session, principal.membership_id)
            session_token = _event_session.set(session)
            loaders_token = _event_loaders.set(loaders or Loaders(self))
            try:
                yield session
            finally:
                with contextlib.suppress(ValueError):  # closed from another context
                    _event_session.reset(session_token)
                    _event_loaders.reset(loaders_token)

    @property
    def channel_services(self) -> ChannelServices:
        from weflux.services.channels import Services as ChannelServices

        state = self.request.app.state
        return ChannelServices(keyring=state.keyring, cloud=state.cloud_api, broker=state.broker)

    @property
    def actor(self) -> Principal:
        """The authenticated caller (the edge guarantees one on every operation)."""
        if self.principal is None:
            from weflux.errors import Unauthenticated

            raise Unauthenticated("Authentication required")
        return self.principal

    @property
    def unit(self) -> AsyncSession:
        """The request's (or the live event's) session, scoped to the caller's workspace."""
        session = _event_session.get() or self.session
        if session is None:
            raise RuntimeError("no database session in this context")
        return session
