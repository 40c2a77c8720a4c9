"""Channel mutations: credentials go in, and never come out."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.channels.types import (
    SmtpSettings,
    WhatsAppAccount,
    to_smtp_settings,
    to_whatsapp_account,
)
from weflux.gql.context import Context
from weflux.gql.permissions import requires
from weflux.ids import decode_global_id
from weflux.services import channels as channel_service
from weflux.services import smtp as smtp_service

ADMIN = [requires(Permission.MANAGE_CHANNELS)]


@strawberry.input(description="A number to connect; the secrets are write-only.")
class ConnectWhatsAppAccountInput:
    display_phone_number: str
    phone_number_id: str
    business_account_id: str
    access_token: str
    app_secret: str | None = None
    webhook_verify_token: str | None = None


@strawberry.input(description="Credentials to replace; omitted ones stay as they are.")
class UpdateWhatsAppCredentialsInput:
    id: strawberry.ID
    access_token: str | None = None
    app_secret: str | None = None
    webhook_verify_token: str | None = None


@strawberry.input(description="The SMTP server; omitting the password keeps the stored one.")
class SmtpSettingsInput:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    from_address: str
    security: str = strawberry.field(description="STARTTLS, TLS or NONE.")


@strawberry.type
class ChannelMutation:
    @strawberry.mutation(
        description="Connect a number (ADMIN); the access token is checked with Meta first.",
        permission_classes=ADMIN,
    )
    async def connect_whats_app_account(
        self, info: Info[Context, None], input: ConnectWhatsAppAccountInput
    ) -> WhatsAppAccount:
        context = info.context
        row = await channel_service.connect(
            context.unit,
            context.channel_services,
            context.actor,
            context.meta,
            display_phone_number=input.display_phone_number,
            phone_number_id=input.phone_number_id,
            business_account_id=input.business_account_id,
            access_token=input.access_token,
            app_secret=input.app_secret,
            webhook_verify_token=input.webhook_verify_token,
        )
        return to_whatsapp_account(row)

    @strawberry.mutation(description="Replace credentials (ADMIN).", permission_classes=ADMIN)
    async def update_whats_app_credentials(
        self, info: Info[Context, None], input: UpdateWhatsAppCredentialsInput
    ) -> WhatsAppAccount:
        context = info.context
        row = await channel_service.update_credentials(
            context.unit,
            context.channel_services,
            context.actor,
            context.meta,
            account_id=decode_global_id(input.id, "WhatsAppAccount"),
            access_token=input.access_token,
            app_secret=input.app_secret,
            webhook_verify_token=input.webhook_verify_token,
        )
        return to_whatsapp_account(row)

    @strawberry.mutation(
        description="Disconnect a number (ADMIN): its credentials are destroyed, its "
        "conversations and messages stay. Answers the account, status DISCONNECTED; it "
        "stays readable (`node`, `Conversation.whatsAppAccount`, `whatsAppAccounts"
        "(disconnected: INCLUDE)`) but no longer changes: NOT_FOUND for a number that is "
        "disconnected already. Connecting the number again makes a new account.",
        permission_classes=ADMIN,
    )
    async def disconnect_whats_app_account(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The account's id.")],
    ) -> WhatsAppAccount:
        context = info.context
        row = await channel_service.disconnect(
            context.unit,
            context.channel_services,
            context.actor,
            context.meta,
            account_id=decode_global_id(id, "WhatsAppAccount"),
        )
        return to_whatsapp_account(row)

    @strawberry.mutation(
        description="Re-read quality rating, limit tier and status from Meta (ADMIN, MANAGER).",
        permission_classes=[requires(Permission.REFRESH_CHANNEL_HEALTH)],
    )
    async def refresh_whats_app_account_health(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> WhatsAppAccount:
        context = info.context
        row = await channel_service.refresh_health_on_demand(
            context.unit,
            context.channel_services,
            context.actor,
            decode_global_id(id, "WhatsAppAccount"),
        )
        return to_whatsapp_account(row)

    @strawberry.mutation(description="Save the SMTP settings (ADMIN).", permission_classes=ADMIN)
    async def update_smtp_settings(
        self, info: Info[Context, None], input: SmtpSettingsInput
    ) -> SmtpSettings:
        context = info.context
        row = await smtp_service.update(
            context.unit,
            context.channel_services.keyring,
            context.actor,
            context.meta,
            host=input.host,
            port=input.port,
            username=input.username,
            password=input.password,
            from_address=input.from_address,
            security=input.security,
            allow_private=not context.settings.is_production,
        )
        return to_smtp_settings(row)

    @strawberry.mutation(
        description="Send a test email with the stored settings (ADMIN): really connects.",
        permission_classes=ADMIN,
    )
    async def send_test_email(self, info: Info[Context, None], to: str) -> bool:
        context = info.context
        await smtp_service.test_email(
            context.unit,
            context.channel_services.keyring,
            context.actor,
            to=to,
            allow_private=not context.settings.is_production,
        )
        return True
