"""The GraphQL schema."""

from __future__ import annotations

from datetime import datetime

import strawberry

from weflux.models import utcnow


@strawberry.type(description="The root of every read.")
class Query:
    @strawberry.field(description="The server's current time (UTC).")
    def server_time(self) -> datetime:
        return utcnow()


schema = strawberry.Schema(query=Query)
