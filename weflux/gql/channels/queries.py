"""Reads of channels."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.channels.types import (
    DisconnectedFilter,
    SmtpSettings,
    WhatsAppAccount,
    to_smtp_settings,
    to_whatsapp_account,
)
from weflux.gql.context import Context
from weflux.gql.permissions import guarded
from weflux.services import channels as channel_service
from weflux.services import smtp as smtp_service


@strawberry.type
class ChannelQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "The workspace's WhatsApp numbers, with health and limits, oldest first. By "
            "default only those still connected (any status but DISCONNECTED).",
        )
    )
    async def whats_app_accounts(
        self,
        info: Info[Context, None],
        disconnected: Annotated[
            DisconnectedFilter,
            strawberry.argument(
                description="Whether disconnected numbers are listed: EXCLUDE (the "
                "default, as before this argument), INCLUDE or ONLY."
            ),
        ] = DisconnectedFilter.EXCLUDE,
    ) -> list[WhatsAppAccount]:
        rows = await channel_service.list_accounts(
            info.context.unit, disconnected=disconnected.only_disconnected
        )
        return [to_whatsapp_account(row) for row in rows]

    @strawberry.field(
        **guarded(
            Permission.MANAGE_CHANNELS,
            "The workspace's SMTP settings (never the password); null until saved.",
        )
    )
    async def smtp_settings(self, info: Info[Context, None]) -> SmtpSettings | None:
        row = await smtp_service.current(info.context.unit, info.context.actor)
        return to_smtp_settings(row) if row is not None else None
