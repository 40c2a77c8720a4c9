"""Team and session mutations."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.emails import check_email
from weflux.errors import BadUserInput
from weflux.gql.context import Context
from weflux.gql.identity.types import (
    InviteMemberPayload,
    Member,
    Session,
    to_invitation,
    to_member,
    to_session,
)
from weflux.gql.permissions import requires
from weflux.ids import decode_global_id, encode_global_id
from weflux.models import Role
from weflux.services import auth as auth_service
from weflux.services import members as member_service
from weflux.services import sessions as session_service


@strawberry.input(description="Whom to invite, and as what.")
class InviteMemberInput:
    email: str
    name: str
    role: Role


@strawberry.input(description="A member and their new role.")
class UpdateMemberRoleInput:
    member_id: strawberry.ID
    role: Role


@strawberry.input(description="The current password and the new one.")
class ChangePasswordInput:
    current_password: str
    new_password: str


def _text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit:
        raise BadUserInput(
            f"`{field}` must be 1 to {limit} characters",
            details=[{"field": field, "message": f"1 to {limit} characters"}],
        )
    return value


@strawberry.type
class IdentityMutation:
    @strawberry.mutation(
        description=(
            "Invite someone (ADMIN: any role; MANAGER: AGENT only). The token is shown once."
        ),
        permission_classes=[requires(Permission.INVITE_AGENTS)],
    )
    async def invite_member(
        self, info: Info[Context, None], input: InviteMemberInput
    ) -> InviteMemberPayload:
        context = info.context
        invitation, token = await member_service.invite(
            context.unit,
            context.actor,
            context.meta,
            email=check_email(input.email, "email"),
            name=_text(input.name, "name", 200),
            role=input.role,
        )
        return InviteMemberPayload(invitation=to_invitation(invitation), token=token)

    @strawberry.mutation(
        description="Change a member's role (ADMIN). The last ADMIN cannot be demoted.",
        permission_classes=[requires(Permission.MANAGE_MEMBERS)],
    )
    async def update_member_role(
        self, info: Info[Context, None], input: UpdateMemberRoleInput
    ) -> Member:
        context = info.context
        row = await member_service.update_role(
            context.unit,
            context.authenticator,
            context.actor,
            context.meta,
            membership_id=decode_global_id(input.member_id, "Member"),
            role=input.role,
        )
        return to_member(row)

    @strawberry.mutation(
        description="Remove a member and end all their sessions (ADMIN). Not the last ADMIN. "
        "Answers the removed member's id, for a client cache to evict.",
        permission_classes=[requires(Permission.MANAGE_MEMBERS)],
    )
    async def remove_member(
        self, info: Info[Context, None], member_id: strawberry.ID
    ) -> strawberry.ID:
        context = info.context
        membership_id = decode_global_id(member_id, "Member")
        await member_service.remove(
            context.unit,
            context.authenticator,
            context.actor,
            context.meta,
            membership_id=membership_id,
        )
        return strawberry.ID(encode_global_id("Member", membership_id))

    @strawberry.mutation(
        description="Revoke a session: one's own, or (ADMIN) anyone's in the workspace.",
        permission_classes=[requires(Permission.MANAGE_OWN_ACCOUNT)],
    )
    async def revoke_session(self, info: Info[Context, None], id: strawberry.ID) -> Session:
        context = info.context
        row = await session_service.revoke_one(
            context.unit,
            context.authenticator,
            context.actor,
            decode_global_id(id, "Session"),
            context.meta,
        )
        return to_session(row, context.actor.session_id)

    @strawberry.mutation(
        description=(
            "Change one's own password; every other session of the user ends. Wrong current "
            "passwords count against the same per-account limit as logins (RATE_LIMITED)."
        ),
        permission_classes=[requires(Permission.MANAGE_OWN_ACCOUNT)],
    )
    async def change_password(self, info: Info[Context, None], input: ChangePasswordInput) -> bool:
        context = info.context
        await auth_service.change_password(
            context.db,
            context.authenticator,
            context.password_guard,
            context.actor,
            context.meta,
            current_password=input.current_password,
            new_password=input.new_password,
        )
        return True
