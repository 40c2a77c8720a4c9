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
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.mail import SmtpSecurity
from weflux.services import channels as channel_service
from weflux.services import smtp as smtp_service


@strawberry.input(description="A number to connect; the secrets are write-only.")
class ConnectWhatsAppAccountInput:
    display_phone_number: str = strawberry.field(
        description="The number as it should be shown (say +1 555 0100)."
    )
    phone_number_id: str = strawberry.field(
        description="Meta's id of the phone number (WhatsApp Manager, API setup)."
    )
    business_account_id: str = strawberry.field(
        description="Meta's id of the WhatsApp Business Account that owns the number; the "
        "access token must see the number under it."
    )
    access_token: str = strawberry.field(
        description="A Cloud API access token (a system user's), checked with Meta first. "
        "Stored encrypted, never shown again."
    )
    app_secret: str | None = strawberry.field(
        default=None,
        description="The Meta app's secret, which signs this number's webhooks; null: the "
        "platform's. Stored encrypted, never shown again.",
    )
    webhook_verify_token: str | None = strawberry.field(
        default=None,
        description="The verify token to enter in Meta's webhook settings for `webhookPath`; "
        "null: none (the handshake then fails). Stored encrypted, never shown again.",
    )


@strawberry.input(description="Credentials to replace; omitted ones stay as they are.")
class UpdateWhatsAppCredentialsInput:
    id: strawberry.ID = strawberry.field(description="The account's id.")
    access_token: str | None = strawberry.field(
        default=None, description="A new access token, checked with Meta first; null: kept."
    )
    app_secret: str | None = strawberry.field(
        default=None, description="A new app secret; null: kept."
    )
    webhook_verify_token: str | None = strawberry.field(
        default=None, description="A new webhook verify token; null: kept."
    )


@strawberry.input(description="The SMTP server; omitting the password keeps the stored one.")
class SmtpSettingsInput:
    host: str = strawberry.field(
        description="The mail server's host name or IP address, an IPv6 one bare or in brackets "
        "(stored in its short form without brackets; in production, not a private address)."
    )
    port: int = strawberry.field(description="Its TCP port, 1 to 65535.")
    username: str | None = strawberry.field(
        default=None, description="The login name; null: no login."
    )
    password: str | None = strawberry.field(
        default=None,
        description="The login password; null: the stored one is kept. Stored encrypted, "
        "never shown again.",
    )
    from_address: str = strawberry.field(description="The sender address of outgoing mail.")
    security: str = strawberry.field(
        description=f"How to protect the connection: one of {', '.join(SmtpSecurity)}."
    )


@strawberry.type
class ChannelMutation:
    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_CHANNELS,
            "Connect a number; the access token is checked with Meta first (BAD_USER_INPUT "
            "when Meta refuses it, UPSTREAM_UNAVAILABLE when Meta cannot be reached).",
        )
    )
    async def connect_whats_app_account(
        self,
        info: Info[Context, None],
        input: Annotated[
            ConnectWhatsAppAccountInput,
            strawberry.argument(description="The number and its credentials."),
        ],
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

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_CHANNELS,
            "Replace a number's credentials (at least one); a new access token is checked "
            "with Meta first.",
        )
    )
    async def update_whats_app_credentials(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateWhatsAppCredentialsInput,
            strawberry.argument(description="The account and the credentials to replace."),
        ],
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
        **guarded(
            Permission.MANAGE_CHANNELS,
            "Disconnect a number: its credentials are destroyed, its "
            "conversations and messages stay. Answers the account, status DISCONNECTED; it "
            "stays readable (`node`, `Conversation.whatsAppAccount`, `whatsAppAccounts"
            "(disconnected: INCLUDE)`) but no longer changes: NOT_FOUND for a number that is "
            "disconnected already. Connecting the number again makes a new account.",
        )
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
        **guarded(
            Permission.REFRESH_CHANNEL_HEALTH,
            "Re-read quality rating, limit tier, throughput and status from Meta now (the "
            "worker also does it periodically).",
        )
    )
    async def refresh_whats_app_account_health(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The account's id.")],
    ) -> WhatsAppAccount:
        context = info.context
        row = await channel_service.refresh_health_on_demand(
            context.unit,
            context.channel_services,
            context.actor,
            decode_global_id(id, "WhatsAppAccount"),
        )
        return to_whatsapp_account(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_CHANNELS,
            "Save the workspace's SMTP settings, replacing any before.",
        )
    )
    async def update_smtp_settings(
        self,
        info: Info[Context, None],
        input: Annotated[SmtpSettingsInput, strawberry.argument(description="The settings.")],
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
            allowed_ports=context.settings.smtp_ports_guard,
        )
        return to_smtp_settings(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_CHANNELS,
            "Send a test email with the stored settings: really connects. Answers true; a "
            "failure is BAD_USER_INPUT saying what went wrong.",
        )
    )
    async def send_test_email(
        self,
        info: Info[Context, None],
        to: Annotated[str, strawberry.argument(description="The address to send it to.")],
    ) -> bool:
        context = info.context
        await smtp_service.test_email(
            context.unit,
            context.channel_services.keyring,
            context.actor,
            to=to,
            allow_private=not context.settings.is_production,
            allowed_ports=context.settings.smtp_ports_guard,
        )
        return True
