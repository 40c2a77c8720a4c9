"""Two-factor mutations (docs/security/two-factor.md)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.identity.types import Member, Organization, to_member, to_organization
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.services import two_factor as two_factor_service


@strawberry.type(
    description="A new TOTP secret, shown once: add it to an authenticator app, then "
    "confirmTwoFactorEnrollment with its first code."
)
class TwoFactorEnrollment:
    secret: str = strawberry.field(description="The base32 secret, to type in by hand.")
    otpauth_uri: str = strawberry.field(description="The `otpauth://totp/...` URI of the secret.")
    qr_code_svg: str = strawberry.field(description="The URI as a QR code (an SVG document).")


@strawberry.input(description="The password and a current code, to turn two factors off.")
class DisableTwoFactorInput:
    password: str = strawberry.field(description="The caller's password.")
    code: str = strawberry.field(description="A current code of the authenticator app.")


@strawberry.input(description="The workspace's security policy.")
class OrganizationSecurityInput:
    require_two_factor: bool = strawberry.field(
        description="Every member must use two factors; those without can only enroll."
    )


@strawberry.type
class TwoFactorMutation:
    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Start enrolling the caller in two factors: a new secret, shown once. Nothing "
            "changes until confirmTwoFactorEnrollment; CONFLICT when already on.",
        )
    )
    async def begin_two_factor_enrollment(self, info: Info[Context, None]) -> TwoFactorEnrollment:
        context = info.context
        enrollment = await two_factor_service.begin_enrollment(
            context.unit, context.channel_services.keyring, context.actor
        )
        return TwoFactorEnrollment(
            secret=enrollment.secret,
            otpauth_uri=enrollment.otpauth_uri,
            qr_code_svg=enrollment.qr_code_svg,
        )

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Turn two factors on with the first code of the app. Answers the ten recovery "
            "codes, shown once. A wrong code is INVALID_MFA_CODE (throttled).",
        )
    )
    async def confirm_two_factor_enrollment(
        self,
        info: Info[Context, None],
        code: Annotated[
            str,
            strawberry.argument(description="The 6-digit code the authenticator app shows now."),
        ],
    ) -> list[str]:
        context = info.context
        return await two_factor_service.confirm_enrollment(
            context.unit,
            context.password_guard,
            context.channel_services.keyring,
            context.authenticator,
            context.actor,
            context.meta,
            code=code,
        )

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Turn the caller's two factors off, with the password and a code. Answers true.",
        )
    )
    async def disable_two_factor(
        self,
        info: Info[Context, None],
        input: Annotated[
            DisableTwoFactorInput,
            strawberry.argument(description="The password and a current code."),
        ],
    ) -> bool:
        context = info.context
        await two_factor_service.disable(
            context.unit,
            context.password_guard,
            context.channel_services.keyring,
            context.authenticator,
            context.actor,
            context.meta,
            password=input.password,
            code=input.code,
        )
        return True

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_OWN_ACCOUNT,
            "Ten new recovery codes (shown once) for a current code; the old ones stop working.",
        )
    )
    async def regenerate_recovery_codes(
        self,
        info: Info[Context, None],
        code: Annotated[
            str,
            strawberry.argument(description="The 6-digit code the authenticator app shows now."),
        ],
    ) -> list[str]:
        context = info.context
        return await two_factor_service.regenerate_recovery_codes(
            context.unit,
            context.password_guard,
            context.channel_services.keyring,
            context.actor,
            context.meta,
            code=code,
        )

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_SECURITY,
            "Clear a member's two factors (a lost phone): every session of theirs ends and "
            "they enroll again. Only for a member of this workspace alone: FORBIDDEN when "
            "they also belong to another workspace, whose second factor this would strip "
            "(the platform's operator resets them: `weflux two-factor reset`).",
        )
    )
    async def reset_member_two_factor(
        self,
        info: Info[Context, None],
        member_id: Annotated[
            strawberry.ID, strawberry.argument(description="The member's id (`Member.id`).")
        ],
    ) -> Member:
        context = info.context
        row = await two_factor_service.reset_member(
            context.unit,
            context.authenticator,
            context.actor,
            context.meta,
            membership_id=decode_global_id(member_id, "Member"),
        )
        return to_member(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_SECURITY,
            "Set the workspace's security policy: with requireTwoFactor, members without two "
            "factors can only enroll.",
        )
    )
    async def update_organization_security(
        self,
        info: Info[Context, None],
        input: Annotated[
            OrganizationSecurityInput, strawberry.argument(description="The new policy.")
        ],
    ) -> Organization:
        context = info.context
        row = await two_factor_service.update_security(
            context.unit,
            context.authenticator,
            context.actor,
            context.meta,
            require_two_factor=input.require_two_factor,
        )
        return to_organization(row)
