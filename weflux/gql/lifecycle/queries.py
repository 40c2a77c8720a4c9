"""Reads: data requests."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.lifecycle.types import DataRequest, to_data_request
from weflux.gql.permissions import guarded
from weflux.gql.types import After, Connection, First, to_connection
from weflux.lifecycle import requests as lifecycle_requests


@strawberry.type
class LifecycleQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_AUDIT,
            "Erasures, deletions and exports of the workspace, newest first.",
        )
    )
    async def data_requests(
        self, info: Info[Context, None], first: First = None, after: After = None
    ) -> Connection[DataRequest]:
        page = await lifecycle_requests.list_requests(
            info.context.unit, info.context.actor, first=first, after=after
        )
        return to_connection(page, to_data_request)
