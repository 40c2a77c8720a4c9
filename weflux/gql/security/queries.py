"""Reads: security events (READ_AUDIT: Admins)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.permissions import guarded
from weflux.gql.security.types import SecurityEvent, to_security_event
from weflux.gql.types import After, Connection, First, to_connection
from weflux.models import SecuritySeverity
from weflux.secops import events as security_events


@strawberry.type
class SecurityQuery:
    @strawberry.field(
        **guarded(Permission.READ_AUDIT, "The workspace's security events, newest first.")
    )
    async def security_events(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        severity: Annotated[
            SecuritySeverity | None,
            strawberry.argument(description="Only events of this severity; null: all."),
        ] = None,
    ) -> Connection[SecurityEvent]:
        page = await security_events.list_events(
            info.context.unit, first=first, after=after, severity=severity
        )
        return to_connection(page, to_security_event)
