"""The per-request GraphQL context: who calls, the unit of work, fresh DataLoaders."""

from __future__ import annotations

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


@dataclass
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
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        from weflux.gql.loaders import Loaders

        self.loaders = Loaders(self)

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
        """The request's database session, scoped to the caller's workspace."""
        if self.session is None:
            raise RuntimeError("no database session in this context")
        return self.session
