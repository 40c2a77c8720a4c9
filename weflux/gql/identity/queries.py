"""Reads: viewer, organization, members, sessions, audit events."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
from weflux.errors import NotFound
from weflux.gql.context import Context
from weflux.gql.identity.types import (
    AuditEvent,
    Invitation,
    Member,
    Organization,
    Session,
    to_audit_event,
    to_invitation,
    to_member,
    to_organization,
    to_session,
)
from weflux.gql.permissions import guarded
from weflux.gql.types import After, Connection, First, to_connection
from weflux.ids import decode_optional_global_id
from weflux.models import Membership
from weflux.models import Organization as OrganizationRow
from weflux.services import audit as audit_service
from weflux.services import members as member_service
from weflux.services import sessions as session_service


@strawberry.type
class IdentityQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "The caller's own membership: their role, user and workspace.",
        )
    )
    async def viewer(self, info: Info[Context, None]) -> Member:
        row = await info.context.unit.get(Membership, info.context.actor.membership_id)
        if row is None:
            raise NotFound("Member not found")
        return to_member(row)

    @strawberry.field(**guarded(Permission.READ_WORKSPACE, "The caller's workspace."))
    async def organization(self, info: Info[Context, None]) -> Organization:
        row = await info.context.unit.get(OrganizationRow, info.context.actor.org_id)
        if row is None:
            raise NotFound("Workspace not found")
        return to_organization(row)

    @strawberry.field(
        **guarded(Permission.READ_WORKSPACE, "Every member of the workspace, oldest first.")
    )
    async def members(self, info: Info[Context, None]) -> list[Member]:
        rows = await member_service.members(info.context.unit)
        for _, user in rows:
            info.context.loaders.user.prime(user.id, user)
        return [to_member(membership) for membership, _ in rows]

    @strawberry.field(
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Unexpired sessions, newest first (at most 100), revoked ones included "
            "(`revokedAt`): the caller's own, or, "
            f"for {who_may(Permission.MANAGE_MEMBERS)}, a member's.",
        )
    )
    async def sessions(
        self,
        info: Info[Context, None],
        member_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Whose sessions (`Member.id`); null: the caller's."),
        ] = None,
    ) -> list[Session]:
        actor = info.context.actor
        target = decode_optional_global_id(member_id, "Member")
        rows = await session_service.sessions_of(info.context.unit, actor, target)
        return [to_session(row, actor.session_id) for row in rows]

    @strawberry.field(
        **guarded(
            Permission.INVITE_AGENTS,
            "Pending invitations (not accepted, not expired), oldest first, at most 100.",
        )
    )
    async def invitations(self, info: Info[Context, None]) -> list[Invitation]:
        rows = await member_service.pending_invitations(info.context.unit, info.context.actor)
        return [to_invitation(row) for row in rows]

    @strawberry.field(
        **guarded(Permission.READ_AUDIT, "The workspace's audit trail, newest first.")
    )
    async def audit_events(
        self, info: Info[Context, None], first: First = None, after: After = None
    ) -> Connection[AuditEvent]:
        page = await audit_service.list_events(info.context.unit, first=first, after=after)
        return to_connection(page, to_audit_event)
