"""The security event type: what a detector saw, never a secret or message text."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.gql.context import Context
from weflux.gql.identity.types import Member, to_member
from weflux.gql.types import Connection, Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.models import SecuritySeverity

graphql_enum(
    SecuritySeverity,
    description="How urgent a security event is; HIGH and CRITICAL ones are alerted.",
    values={
        SecuritySeverity.LOW: "Worth knowing (a login from a new device).",
        SecuritySeverity.MEDIUM: "Worth a look (bad webhook signatures, a data export).",
        SecuritySeverity.HIGH: "Act now: emailed to the Admins and sent to the on-call.",
        SecuritySeverity.CRITICAL: "An attack in progress: emailed and sent to the on-call.",
    },
)


async def _member(info: Info[Context, None], membership_id: uuid.UUID | None) -> Member | None:
    if membership_id is None:
        return None
    row = await info.context.loaders.membership.load(membership_id)
    return to_member(row) if row is not None else None


@strawberry.type(
    description="Something a detector saw in the workspace (ADMIN). Never holds a password, "
    "token or message text."
)
class SecurityEvent(Node):
    id: strawberry.ID = strawberry.field(description="The event's global id.")
    kind: str = strawberry.field(
        description="What was seen, e.g. `auth.brute_force` (docs/security/operations.md)."
    )
    severity: SecuritySeverity = strawberry.field(description="How urgent it is.")
    summary: str = strawberry.field(description="One sentence for people.")
    ip_address: str | None = strawberry.field(description="The client IP, when there is one.")
    user_agent: str | None = strawberry.field(description="The client's user agent, if known.")
    created_at: datetime = strawberry.field(description="When it was seen.")
    acknowledged_at: datetime | None = strawberry.field(
        description="When an Admin acknowledged it (null: not yet)."
    )
    actor_membership_id: strawberry.Private[uuid.UUID | None]
    acknowledged_by_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="The member it is about (null when unknown or gone).")
    async def actor(self, info: Info[Context, None]) -> Member | None:
        return await _member(info, self.actor_membership_id)

    @strawberry.field(description="The Admin who acknowledged it.")
    async def acknowledged_by(self, info: Info[Context, None]) -> Member | None:
        return await _member(info, self.acknowledged_by_membership_id)


SecurityEventConnection = Connection[SecurityEvent]


def to_security_event(row: models.SecurityEvent) -> SecurityEvent:
    return SecurityEvent(
        id=strawberry.ID(encode_global_id("SecurityEvent", row.id)),
        kind=row.kind,
        severity=SecuritySeverity(row.severity),
        summary=row.summary,
        ip_address=row.ip_address,
        user_agent=row.user_agent,
        created_at=row.created_at,
        acknowledged_at=row.acknowledged_at,
        actor_membership_id=row.actor_membership_id,
        acknowledged_by_membership_id=row.acknowledged_by_membership_id,
    )
