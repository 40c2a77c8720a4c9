"""Sending: a reply or a template, queued in the request's own transaction (the outbox)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.inbox.types import Message, to_message
from weflux.gql.permissions import requires
from weflux.ids import decode_global_id
from weflux.services import outbound

REPLY = [requires(Permission.REPLY)]


@strawberry.input(description="A text reply in a conversation.")
class SendMessageInput:
    conversation_id: strawberry.ID
    text: str
    client_message_id: str | None = strawberry.field(
        default=None,
        description="Your own id for this send (unique in the workspace, 1 to 128 "
        "characters): a retry with it and the same text answers the first message and "
        "never sends twice; reusing it for another conversation, kind or text is CONFLICT.",
    )


@strawberry.input(description="An approved template, allowed outside the 24-hour window.")
class SendTemplateMessageInput:
    conversation_id: strawberry.ID
    template_name: str
    language_code: str
    body_parameters: list[str] = strawberry.field(default_factory=list)
    client_message_id: str | None = strawberry.field(
        default=None,
        description="As in SendMessageInput: a retry with the same template, language and "
        "parameters answers the first message; anything else under a used id is CONFLICT.",
    )


@strawberry.type
class SendingMutation:
    @strawberry.mutation(
        description=(
            "Reply in a visible conversation. The message is QUEUED and delivered by the "
            "worker; OUTSIDE_SERVICE_WINDOW 24 hours after the contact last wrote, "
            "CONTACT_OPTED_OUT after a STOP."
        ),
        permission_classes=REPLY,
    )
    async def send_message(self, info: Info[Context, None], input: SendMessageInput) -> Message:
        context = info.context
        row = await outbound.send_message(
            context.unit,
            context.actor,
            info.context.broker,
            conversation_id=decode_global_id(input.conversation_id, "Conversation"),
            text=input.text,
            client_message_id=input.client_message_id,
        )
        return to_message(row)

    @strawberry.mutation(
        description="Send an approved template in a visible conversation, any time.",
        permission_classes=REPLY,
    )
    async def send_template_message(
        self, info: Info[Context, None], input: SendTemplateMessageInput
    ) -> Message:
        context = info.context
        row = await outbound.send_template_message(
            context.unit,
            context.actor,
            info.context.broker,
            conversation_id=decode_global_id(input.conversation_id, "Conversation"),
            template_name=input.template_name,
            language_code=input.language_code,
            body_parameters=list(input.body_parameters),
            client_message_id=input.client_message_id,
        )
        return to_message(row)
