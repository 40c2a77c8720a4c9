"""Team and session mutations."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
from weflux.emails import check_email
from weflux.errors import BadUserInput
from weflux.gql.context import Context
from weflux.gql.identity.types import (
    Invitation,
    InviteMemberPayload,
    Member,
    Session,
    to_invitation,
    to_member,
    to_session,
)
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id, encode_global_id
from weflux.models import Role
from weflux.services import auth as auth_service
from weflux.services import members as member_service
from weflux.services import sessions as session_service
from weflux.services.members import Postman


@strawberry.input(description="Whom to invite, and as what.")
class InviteMemberInput:
    email: str = strawberry.field(
        description="Where the invitation goes; the invitee logs in with it. A valid address "
        "(checked by its syntax only)."
    )
    name: str = strawberry.field(description="The invitee's name, 1 to 200 characters.")
    role: Role = strawberry.field(description="The role they get on accepting.")


@strawberry.input(description="A member and their new role.")
class UpdateMemberRoleInput:
    member_id: strawberry.ID = strawberry.field(description="The member's id (`Member.id`).")
    role: Role = strawberry.field(description="Their new role.")


@strawberry.input(description="The current password and the new one.")
class ChangePasswordInput:
    current_password: str = strawberry.field(description="The caller's password now.")
    new_password: str = strawberry.field(
        description="The new password; the password policy applies (BAD_USER_INPUT with the "
        "reason when it refuses it)."
    )


def _postman(context: Context) -> Postman | None:
    if context.mailer is None:
        return None
    return Postman(context.mailer, context.settings.app_base_url)


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
        **guarded(
            Permission.INVITE_AGENTS,
            "Invite someone to the workspace; the invitee is emailed the accept link. The "
            "token is shown once. Only "
            f"{who_may(Permission.INVITE_ANY_ROLE)} may invite a role other than AGENT. A "
            "pending invitation for the same email is replaced, unless someone with more "
            "rights made it (CONFLICT).",
        )
    )
    async def invite_member(
        self,
        info: Info[Context, None],
        input: Annotated[InviteMemberInput, strawberry.argument(description="Whom to invite.")],
    ) -> InviteMemberPayload:
        context = info.context
        invitation, token = await member_service.invite(
            context.unit,
            context.actor,
            context.meta,
            email=check_email(input.email, "email"),
            name=_text(input.name, "name", 200),
            role=input.role,
            limiter=context.limiter,
            postman=_postman(context),
        )
        return InviteMemberPayload(invitation=to_invitation(invitation), token=token)

    @strawberry.mutation(
        **guarded(
            Permission.INVITE_AGENTS,
            "Revoke a pending invitation: its link stops working. Answers its id. A MANAGER "
            "only AGENT invitations no ADMIN made (else FORBIDDEN).",
        )
    )
    async def revoke_invitation(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The invitation's id.")],
    ) -> strawberry.ID:
        context = info.context
        revoked = await member_service.revoke_invitation(
            context.unit, context.actor, context.meta, decode_global_id(id, "Invitation")
        )
        return strawberry.ID(encode_global_id("Invitation", revoked))

    @strawberry.mutation(
        **guarded(
            Permission.INVITE_AGENTS,
            "Email a pending invitation again with a new link (the old one stops working) "
            "and 7 more days; rate-limited per invitation (RATE_LIMITED). A MANAGER only "
            "AGENT invitations no ADMIN made (else FORBIDDEN).",
        )
    )
    async def resend_invitation(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The invitation's id.")],
    ) -> Invitation:
        context = info.context
        row = await member_service.resend_invitation(
            context.unit,
            context.actor,
            context.meta,
            context.limiter,
            decode_global_id(id, "Invitation"),
            postman=_postman(context),
        )
        return to_invitation(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_MEMBERS,
            "Change a member's role; it applies to their next request. The last ADMIN cannot "
            "be demoted (CONFLICT).",
        )
    )
    async def update_member_role(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateMemberRoleInput, strawberry.argument(description="The member and the role.")
        ],
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
        **guarded(
            Permission.MANAGE_MEMBERS,
            "Remove a member and end all their sessions at once; not the last ADMIN "
            "(CONFLICT). Answers the removed member's id, for a client cache to evict.",
        )
    )
    async def remove_member(
        self,
        info: Info[Context, None],
        member_id: Annotated[
            strawberry.ID, strawberry.argument(description="The member's id (`Member.id`).")
        ],
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
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "End a session: every token issued under it stops working and its sockets close. "
            f"One's own, or, for {who_may(Permission.MANAGE_MEMBERS)}, anyone's in the "
            "workspace.",
        )
    )
    async def revoke_session(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The session's id.")],
    ) -> Session:
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
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Change one's own password; every other session of the user ends. Wrong current "
            "passwords count against the same per-account limit as logins (RATE_LIMITED). "
            "Answers true.",
        )
    )
    async def change_password(
        self,
        info: Info[Context, None],
        input: Annotated[
            ChangePasswordInput,
            strawberry.argument(description="The current password and the new one."),
        ],
    ) -> bool:
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
