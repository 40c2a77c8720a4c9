"""Message templates of a number: read by everyone, synced from Meta by ADMIN and MANAGER."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.permissions import guarded
from weflux.gql.types import Node
from weflux.ids import decode_global_id, encode_global_id
from weflux.services import templates as template_service

AccountId = Annotated[
    strawberry.ID, strawberry.argument(description="The WhatsApp account (number) asked about.")
]


@strawberry.type(
    description="A message template of a number's business account, as last synced from "
    "Meta and updated by its status webhooks."
)
class MessageTemplate(Node):
    id: strawberry.ID = strawberry.field(description="The template's global id.")
    name: str = strawberry.field(description="Meta's template name (sent as templateName).")
    language_code: str = strawberry.field(
        description="The template's language (sent as languageCode), such as en_US."
    )
    category: str = strawberry.field(description="MARKETING, UTILITY or AUTHENTICATION.")
    status: str = strawberry.field(
        description="Meta's review status: APPROVED (the only one that can be sent), "
        "PENDING, REJECTED, PAUSED, DISABLED..."
    )
    body_text: str | None = strawberry.field(
        description="The body component's text, with its {{n}} placeholders."
    )
    parameter_count: int = strawberry.field(
        description="How many bodyParameters a send must give (distinct {{n}} placeholders)."
    )


def to_message_template(row: models.MessageTemplate) -> MessageTemplate:
    return MessageTemplate(
        id=strawberry.ID(encode_global_id("MessageTemplate", row.id)),
        name=row.name,
        language_code=row.language,
        category=row.category,
        status=row.status,
        body_text=row.body_text,
        parameter_count=row.parameter_count,
    )


@strawberry.type
class TemplateQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "A number's templates as last synced, by name and language; NOT_FOUND for a "
            "number outside the workspace.",
        )
    )
    async def message_templates(
        self,
        info: Info[Context, None],
        whats_app_account_id: AccountId,
        status: Annotated[
            str | None,
            strawberry.argument(description="Only templates of this status, say APPROVED."),
        ] = None,
    ) -> list[MessageTemplate]:
        rows = await template_service.list_templates(
            info.context.unit,
            decode_global_id(whats_app_account_id, "WhatsAppAccount"),
            status=status,
        )
        return [to_message_template(row) for row in rows]


@strawberry.type
class TemplateMutation:
    @strawberry.mutation(
        **guarded(
            Permission.REFRESH_CHANNEL_HEALTH,
            "Re-read every page of a number's templates from Meta now; the worker also does "
            "it daily. UPSTREAM_UNAVAILABLE when Meta fails.",
        )
    )
    async def sync_message_templates(
        self, info: Info[Context, None], whats_app_account_id: AccountId
    ) -> list[MessageTemplate]:
        context = info.context
        rows = await template_service.sync_on_demand(
            context.unit,
            context.channel_services,
            context.actor,
            decode_global_id(whats_app_account_id, "WhatsAppAccount"),
        )
        return [to_message_template(row) for row in rows]
