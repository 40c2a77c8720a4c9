"""Reads: data requests."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.lifecycle.types import DataRequest, to_data_request
from weflux.gql.permissions import requires
from weflux.gql.types import Connection, to_connection
from weflux.lifecycle import requests as lifecycle_requests


@strawberry.type
class LifecycleQuery:
    @strawberry.field(
        description="Erasures, deletions and exports of the workspace, newest first (ADMIN).",
        permission_classes=[requires(Permission.READ_AUDIT)],
    )
    async def data_requests(
        self, info: Info[Context, None], first: int | None = None, after: str | None = None
    ) -> Connection[DataRequest]:
        page = await lifecycle_requests.list_requests(
            info.context.unit, info.context.actor, first=first, after=after
        )
        return to_connection(page, to_data_request)
