"""GraphQL types of people, workspaces, sessions and the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.errors import NotFound
from weflux.gql.context import Context
from weflux.gql.types import Connection, Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.models import Role

graphql_enum(Role, description="Roles, strongest first.")


@strawberry.type(
    description="A person who can log in. `node(id:)` finds the users who are members of "
    "the caller's workspace; any other is NOT_FOUND."
)
class User(Node):
    id: strawberry.ID
    email: str
    name: str
    two_factor_enabled: bool = strawberry.field(
        description="Whether the user logs in with a second factor (an authenticator app)."
    )


@strawberry.type(description="A workspace.")
class Organization(Node):
    id: strawberry.ID
    name: str
    created_at: datetime
    require_two_factor: bool = strawberry.field(
        description="Whether every member must use two factors (updateOrganizationSecurity)."
    )


@strawberry.type(description="A user's membership of the workspace, with their role.")
class Member(Node):
    id: strawberry.ID
    role: Role
    created_at: datetime
    user_id: strawberry.Private[uuid.UUID]
    org_id: strawberry.Private[uuid.UUID]

    @strawberry.field(description="The person.")
    async def user(self, info: Info[Context, None]) -> User:
        row = await info.context.loaders.user.load(self.user_id)
        if row is None:
            raise NotFound("User not found")
        return to_user(row)

    @strawberry.field(description="The workspace.")
    async def organization(self, info: Info[Context, None]) -> Organization:
        row = await info.context.loaders.organization.load(self.org_id)
        if row is None:
            raise NotFound("Workspace not found")
        return to_organization(row)


@strawberry.type(description="A login session; revoking it ends every token issued under it.")
class Session(Node):
    id: strawberry.ID
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    ip_address: str | None
    user_agent: str | None
    current: bool = strawberry.field(description="Whether this is the caller's own session.")


@strawberry.type(description="A pending invitation to join the workspace.")
class Invitation(Node):
    id: strawberry.ID
    email: str
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime


@strawberry.type(description="The invitation and its single-use token (shown only once).")
class InviteMemberPayload:
    invitation: Invitation
    token: str = strawberry.field(
        description="Give it to the invitee; accept it at POST /auth/invitations/accept."
    )


@strawberry.type(description="A security-relevant action in the workspace.")
class AuditEvent(Node):
    id: strawberry.ID
    action: str
    target_type: str | None
    target_id: str | None
    ip_address: str | None
    created_at: datetime
    actor_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="Who did it (null when the member is gone or unknown).")
    async def actor(self, info: Info[Context, None]) -> Member | None:
        if self.actor_membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.actor_membership_id)
        return to_member(row) if row is not None else None


AuditEventConnection = Connection[AuditEvent]


def to_user(row: models.User) -> User:
    return User(
        id=strawberry.ID(encode_global_id("User", row.id)),
        email=row.email,
        name=row.name,
        two_factor_enabled=row.two_factor_enabled_at is not None,
    )


def to_organization(row: models.Organization) -> Organization:
    return Organization(
        id=strawberry.ID(encode_global_id("Organization", row.id)),
        name=row.name,
        created_at=row.created_at,
        require_two_factor=row.require_two_factor,
    )


def to_member(row: models.Membership) -> Member:
    return Member(
        id=strawberry.ID(encode_global_id("Member", row.id)),
        role=row.role,
        created_at=row.created_at,
        user_id=row.user_id,
        org_id=row.org_id,
    )


def to_session(row: models.AuthSession, current_session_id: uuid.UUID) -> Session:
    return Session(
        id=strawberry.ID(encode_global_id("Session", row.id)),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        ip_address=row.ip_address,
        user_agent=row.user_agent,
        current=row.id == current_session_id,
    )


def to_invitation(row: models.Invitation) -> Invitation:
    return Invitation(
        id=strawberry.ID(encode_global_id("Invitation", row.id)),
        email=row.email,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


def _target_global_id(target_type: str | None, target_id: str | None) -> str | None:
    if target_type is None or target_id is None:
        return target_id
    try:
        return encode_global_id(target_type, uuid.UUID(target_id))
    except ValueError:
        return target_id


def to_audit_event(row: models.AuditEvent) -> AuditEvent:
    return AuditEvent(
        id=strawberry.ID(encode_global_id("AuditEvent", row.id)),
        action=row.action,
        target_type=row.target_type,
        target_id=_target_global_id(row.target_type, row.target_id),
        ip_address=row.ip_address,
        created_at=row.created_at,
        actor_membership_id=row.actor_membership_id,
    )
