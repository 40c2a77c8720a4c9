"""GraphQL types of people, workspaces, sessions and the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.auth.permissions import ROLE_MEANINGS
from weflux.errors import NotFound
from weflux.gql.context import Context
from weflux.gql.prefetch import direct, related
from weflux.gql.types import Connection, Node, graphql_enum
from weflux.ids import encode_global_id
from weflux.models import Role
from weflux.services.audit import Action

graphql_enum(
    Role,
    description="What a member may do in the workspace; roles, strongest first.",
    values=ROLE_MEANINGS,
)


@strawberry.type(
    description="A person who can log in. `node(id:)` finds the users who are members of "
    "the caller's workspace; any other is NOT_FOUND."
)
class User(Node):
    id: strawberry.ID = strawberry.field(description="The user's global id.")
    email: str = strawberry.field(description="The address they log in with (lower case).")
    name: str = strawberry.field(description="Their name, as they gave it.")
    two_factor_enabled: bool = strawberry.field(
        description="Whether the user logs in with a second factor (an authenticator app)."
    )


@strawberry.type(description="Days to keep messages and raw webhook bodies.")
class RetentionPolicy:
    message_retention_days: int | None = strawberry.field(
        description="Messages older than this many days are deleted daily; null keeps them."
    )
    webhook_payload_retention_days: int = strawberry.field(
        description="Raw webhook bodies are deleted this many days after processing (1 to 30)."
    )


@strawberry.type(description="A workspace.")
class Organization(Node):
    id: strawberry.ID = strawberry.field(
        description="The workspace's global id (`organizationId` of POST /auth/login)."
    )
    name: str = strawberry.field(description="The workspace's name.")
    created_at: datetime = strawberry.field(description="When the workspace was created.")
    require_two_factor: bool = strawberry.field(
        description="Whether every member must use two factors (updateOrganizationSecurity)."
    )
    retention_policy: RetentionPolicy = strawberry.field(
        description="How long messages and raw webhook bodies are kept."
    )
    deletion_scheduled_at: datetime | None = strawberry.field(
        description="Set while a deletion is scheduled: when the workspace's rows start to go."
    )


@strawberry.type(description="A user's membership of the workspace, with their role.")
class Member(Node):
    id: strawberry.ID = strawberry.field(
        description="The membership's global id (assigneeId, memberId, sentBy)."
    )
    role: Role = strawberry.field(description="What the member may do here.")
    created_at: datetime = strawberry.field(description="When they joined the workspace.")
    user_id: strawberry.Private[uuid.UUID]
    org_id: strawberry.Private[uuid.UUID]

    @strawberry.field(description="The person.")
    @direct
    def user(self, info: Info[Context, None]) -> User:
        # Synchronous: prefetched for a page of conversations (weflux.gql.prefetch).
        return related(info.context.loaders.user, self.user_id, _found_user)

    @strawberry.field(description="The workspace.")
    async def organization(self, info: Info[Context, None]) -> Organization:
        row = await info.context.loaders.organization.load(self.org_id)
        if row is None:
            raise NotFound("Workspace not found")
        return to_organization(row)


@strawberry.type(description="A login session; revoking it ends every token issued under it.")
class Session(Node):
    id: strawberry.ID = strawberry.field(description="The session's global id (revokeSession).")
    created_at: datetime = strawberry.field(description="When the user logged in.")
    last_used_at: datetime | None = strawberry.field(
        description="When it last authenticated a request, to within a minute; null if never."
    )
    expires_at: datetime = strawberry.field(
        description="When it ends unless refreshed (its refresh token's expiry)."
    )
    revoked_at: datetime | None = strawberry.field(
        description="When it was ended (logout, revokeSession, password change, removal); "
        "null while it is live."
    )
    ip_address: str | None = strawberry.field(
        description="The client's IP address at login, as the server saw it; null if unknown."
    )
    user_agent: str | None = strawberry.field(
        description="The client's User-Agent header at login (at most 512 characters); null "
        "if none."
    )
    current: bool = strawberry.field(description="Whether this is the caller's own session.")


@strawberry.type(description="A pending invitation to join the workspace.")
class Invitation(Node):
    id: strawberry.ID = strawberry.field(description="The invitation's global id.")
    email: str = strawberry.field(description="The invitee's address.")
    name: str = strawberry.field(description="The invitee's name, as the inviter wrote it.")
    role: Role = strawberry.field(description="The role the invitee gets on accepting.")
    created_at: datetime = strawberry.field(description="When it was sent.")
    expires_at: datetime = strawberry.field(
        description="After this, its token no longer works: invite again."
    )
    invited_by_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(
        description="The member who made (or last replaced) it; null when they have left "
        "the workspace. A MANAGER may revoke or resend only invitations no ADMIN made."
    )
    async def invited_by(self, info: Info[Context, None]) -> Member | None:
        if self.invited_by_membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.invited_by_membership_id)
        return to_member(row) if row is not None else None


@strawberry.type(description="The invitation and its single-use token (shown only once).")
class InviteMemberPayload:
    invitation: Invitation = strawberry.field(description="The pending invitation.")
    token: str = strawberry.field(
        description="Give it to the invitee; accept it at POST /auth/invitations/accept."
    )


@strawberry.type(description="A security-relevant action in the workspace.")
class AuditEvent(Node):
    id: strawberry.ID = strawberry.field(description="The event's global id.")
    action: str = strawberry.field(description=f"What happened: one of {', '.join(Action)}.")
    target_type: str | None = strawberry.field(
        description="The type of what it happened to (Member, Session, WhatsAppAccount, …); "
        "null when it has no target."
    )
    target_id: str | None = strawberry.field(
        description="The global id of what it happened to (`node(id:)` may resolve it if it "
        "still exists); null when it has no target."
    )
    ip_address: str | None = strawberry.field(
        description="The IP address of the request that did it; null for the server's own actions."
    )
    created_at: datetime = strawberry.field(description="When it happened.")
    actor_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="Who did it (null when the member is gone or unknown).")
    async def actor(self, info: Info[Context, None]) -> Member | None:
        if self.actor_membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.actor_membership_id)
        return to_member(row) if row is not None else None


AuditEventConnection = Connection[AuditEvent]


def _found_user(row: models.User | None) -> User:
    if row is None:
        raise NotFound("User not found")
    return to_user(row)


def member_of(row: models.Membership | None) -> Member | None:
    """The Member of a membership row that may not have loaded (None: none)."""
    return to_member(row) if row is not None else None


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
        retention_policy=to_retention_policy(row),
        deletion_scheduled_at=row.deletion_scheduled_at,
    )


def to_retention_policy(row: models.Organization) -> RetentionPolicy:
    return RetentionPolicy(
        message_retention_days=row.message_retention_days,
        webhook_payload_retention_days=row.webhook_payload_retention_days,
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
        invited_by_membership_id=row.invited_by_membership_id,
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
