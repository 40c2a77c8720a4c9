"""`incidents`: those that affect the caller's workspace (READ_AUDIT: Admins)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.incidents.types import Incident, to_incident
from weflux.gql.permissions import guarded
from weflux.secops import incidents as incident_service


@strawberry.type
class IncidentQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_AUDIT,
            "Security incidents that affect the workspace, newest discovery first.",
        )
    )
    async def incidents(self, info: Info[Context, None]) -> list[Incident]:
        rows = await incident_service.workspace_incidents(info.context.unit)
        return [to_incident(incident, affected) for incident, affected in rows]
