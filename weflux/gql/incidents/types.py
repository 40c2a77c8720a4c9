"""The `Incident` type: one incident as one affected workspace sees it."""

from __future__ import annotations

from datetime import datetime

import strawberry

from weflux import models
from weflux.gql.types import Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.models import INCIDENT_STATUS_MEANINGS, IncidentStatus

graphql_enum(
    IncidentStatus,
    description="Where an incident stands: open until its post-mortem is published.",
    values=INCIDENT_STATUS_MEANINGS,
)


@strawberry.type(
    description="A security incident that affects the workspace, with the platform's "
    "deadlines: Admins are notified within 72 hours of discovery and the written "
    "post-mortem follows within 14 days."
)
class Incident(Node):
    id: strawberry.ID = strawberry.field(description="The incident's global id.")
    title: str = strawberry.field(description="What happened, in a line.")
    status: IncidentStatus = strawberry.field(
        description="OPEN until the post-mortem is published, then CLOSED."
    )
    discovered_at: datetime = strawberry.field(description="When the platform discovered it.")
    notify_by: datetime = strawberry.field(
        description="The deadline of the notice to the workspace's Admins: discovery + 72 hours."
    )
    notified_at: datetime | None = strawberry.field(
        description="When every Admin of this workspace had been notified; null until then."
    )
    post_mortem_due_at: datetime = strawberry.field(
        description="The deadline of the written post-mortem: discovery + 14 days."
    )
    post_mortem_url: str | None = strawberry.field(
        description="Where the published post-mortem is; null until it is."
    )


def to_incident(row: models.Incident, affected: models.IncidentWorkspace) -> Incident:
    return Incident(
        id=strawberry.ID(encode_global_id("Incident", row.id)),
        title=row.title,
        status=row.status,
        discovered_at=row.discovered_at,
        notify_by=row.notify_by,
        notified_at=affected.notified_at,
        post_mortem_due_at=row.post_mortem_due_at,
        post_mortem_url=row.post_mortem_url,
    )
