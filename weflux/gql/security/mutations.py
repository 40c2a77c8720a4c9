"""Writes: acknowledging a security event (ADMIN)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.permissions import requires
from weflux.gql.security.types import SecurityEvent, to_security_event
from weflux.ids import decode_global_id
from weflux.secops import events as security_events
from weflux.services.audit import Action, record


@strawberry.type
class SecurityMutation:
    @strawberry.mutation(
        description="Mark a security event as seen (ADMIN); the first acknowledgement stays.",
        permission_classes=[requires(Permission.READ_AUDIT)],
    )
    async def acknowledge_security_event(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> SecurityEvent:
        context = info.context
        row = await security_events.acknowledge(
            context.unit, decode_global_id(id, "SecurityEvent"), context.actor.membership_id
        )
        await record(
            context.unit,
            Action.SECURITY_EVENT_ACKNOWLEDGED,
            actor=context.actor,
            target_type="SecurityEvent",
            target_id=row.id,
            meta=context.meta,
        )
        return to_security_event(row)
