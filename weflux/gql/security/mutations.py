"""Writes: acknowledging a security event (READ_AUDIT: Admins)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.permissions import guarded
from weflux.gql.security.types import SecurityEvent, to_security_event
from weflux.ids import decode_global_id
from weflux.secops import events as security_events
from weflux.services.audit import Action, record


@strawberry.type
class SecurityMutation:
    @strawberry.mutation(
        **guarded(
            Permission.READ_AUDIT,
            "Mark a security event as seen; the first acknowledgement stays.",
        )
    )
    async def acknowledge_security_event(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The event's id.")],
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
