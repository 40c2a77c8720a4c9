"""Reads: security events (ADMIN)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.permissions import requires
from weflux.gql.security.types import SecurityEvent, to_security_event
from weflux.gql.types import Connection, to_connection
from weflux.models import SecuritySeverity
from weflux.secops import events as security_events


@strawberry.type
class SecurityQuery:
    @strawberry.field(
        description="The workspace's security events, newest first (ADMIN).",
        permission_classes=[requires(Permission.READ_AUDIT)],
    )
    async def security_events(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        severity: SecuritySeverity | None = None,
    ) -> Connection[SecurityEvent]:
        page = await security_events.list_events(
            info.context.unit, first=first, after=after, severity=severity
        )
        return to_connection(page, to_security_event)
