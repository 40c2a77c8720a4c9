"""Sending: a reply, a template, or a first template to a new customer, queued in the
request's own transaction (the outbox)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.inbox.types import Conversation, Message, to_conversation, to_message
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.services import outbound, reactions
from weflux.services.outbound import MAX_TEXT_LENGTH
from weflux.services.phone_numbers import TYPED_PHONE_NUMBER


@strawberry.input(description="A text reply in a conversation.")
class SendMessageInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation's id.")
    text: str = strawberry.field(
        description=f"The text: 1 to {MAX_TEXT_LENGTH} characters, no control characters "
        "but new lines and tabs."
    )
    client_message_id: str | None = strawberry.field(
        default=None,
        description="Your own id for this send (unique in the workspace, 1 to 128 "
        "characters): a retry with it and the same text answers the first message and "
        "never sends twice; reusing it for another conversation, kind or text is CONFLICT.",
    )


@strawberry.input(description="An approved template, allowed outside the 24-hour window.")
class SendTemplateMessageInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation's id.")
    template_name: str = strawberry.field(
        description="The approved template's name, as in WhatsApp Manager (lowercase "
        "letters, digits and underscores)."
    )
    language_code: str = strawberry.field(
        description="The template's language, as Meta codes it (en, en_US, pt_BR, …)."
    )
    body_parameters: list[str] = strawberry.field(
        default_factory=list,
        description="The values of the body's {{1}}, {{2}}, … in order; each non-empty, one "
        "line. Empty when it has none.",
    )
    client_message_id: str | None = strawberry.field(
        default=None,
        description="As in SendMessageInput: a retry with the same template, language and "
        "parameters answers the first message; anything else under a used id is CONFLICT.",
    )


@strawberry.input(
    description="Write first to a customer: their number, and the approved template to send."
)
class StartConversationInput:
    whats_app_account_id: strawberry.ID = strawberry.field(
        description="The workspace's number to write from."
    )
    phone_number: str = strawberry.field(description=f"The customer's number. {TYPED_PHONE_NUMBER}")
    contact_name: str | None = strawberry.field(
        default=None, description="A name for a new contact (an existing one keeps theirs)."
    )
    template_name: str = strawberry.field(description="An APPROVED template of the number.")
    language_code: str = strawberry.field(description="The template's language, such as en_US.")
    body_parameters: list[str] = strawberry.field(
        default_factory=list,
        description="The values of the body's {{n}} placeholders, as many as the template has.",
    )


@strawberry.input(description="A member's emoji reaction to a message, or its removal.")
class ReactToMessageInput:
    message_id: strawberry.ID = strawberry.field(
        description="The message to react to: inbound or outbound, once WhatsApp has its id "
        "(`waMessageId`), at most 30 days old."
    )
    emoji: str = strawberry.field(
        description='One emoji (skin tones, flags and joined sequences count as one); "" '
        "removes the caller's reaction."
    )


@strawberry.type
class SendingMutation:
    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Reply in a visible conversation. The message is QUEUED and delivered by the "
            "worker (`messageUpdated` follows it); OUTSIDE_SERVICE_WINDOW 24 hours after the "
            "contact last wrote, CONTACT_OPTED_OUT after a STOP.",
        )
    )
    async def send_message(
        self,
        info: Info[Context, None],
        input: Annotated[
            SendMessageInput, strawberry.argument(description="The conversation and the text.")
        ],
    ) -> Message:
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
        **guarded(
            Permission.REPLY,
            "Send an approved template in a visible conversation, any time (also outside the "
            "24-hour window); CONTACT_OPTED_OUT after a STOP.",
        )
    )
    async def send_template_message(
        self,
        info: Info[Context, None],
        input: Annotated[
            SendTemplateMessageInput,
            strawberry.argument(description="The conversation, the template and its values."),
        ],
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
            limiter=context.limiter,
        )
        return to_message(row)

    @strawberry.mutation(
        **guarded(
            Permission.START_CONVERSATIONS,
            "Write first to a customer: finds or creates the contact, opens the "
            "conversation (a new one is assigned to the caller) and queues the template. "
            "CONTACT_OPTED_OUT after a STOP; RATE_LIMITED over the template quotas or the "
            "number's messaging-limit tier; BAD_USER_INPUT for an invalid number or a "
            "template that is not APPROVED or given the wrong number of parameters.",
        )
    )
    async def start_conversation(
        self,
        info: Info[Context, None],
        input: Annotated[
            StartConversationInput,
            strawberry.argument(description="The number, the customer and the template."),
        ],
    ) -> Conversation:
        context = info.context
        row = await outbound.start_conversation(
            context.unit,
            context.actor,
            context.broker,
            account_id=decode_global_id(input.whats_app_account_id, "WhatsAppAccount"),
            phone_number=input.phone_number,
            contact_name=input.contact_name,
            template_name=input.template_name,
            language_code=input.language_code,
            body_parameters=list(input.body_parameters),
            limiter=context.limiter,
        )
        return to_conversation(row)

    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "React to a message of a visible conversation with an emoji, or remove the "
            'caller\'s reaction with "". It shows at once in `Message.reactions` (one per '
            "member: a new emoji replaces theirs) and is queued to WhatsApp like a reply. "
            "OUTSIDE_SERVICE_WINDOW 24 hours after the contact last wrote, CONTACT_OPTED_OUT "
            "after a STOP; BAD_USER_INPUT for anything but one emoji, or a message without a "
            "WhatsApp id or older than 30 days. The same emoji again queues nothing. Answers "
            "the message reacted to.",
        )
    )
    async def react_to_message(
        self,
        info: Info[Context, None],
        input: Annotated[
            ReactToMessageInput,
            strawberry.argument(description="The message and the emoji."),
        ],
    ) -> Message:
        context = info.context
        row = await reactions.react_to_message(
            context.unit,
            context.actor,
            context.broker,
            message_id=decode_global_id(input.message_id, "Message"),
            emoji=input.emoji,
        )
        return to_message(row)
