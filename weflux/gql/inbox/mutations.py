"""Inbox mutations: contacts, assignment, status and read state."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
from weflux.gql.context import Context
from weflux.gql.inbox.types import (
    Contact,
    Conversation,
    to_contact,
    to_conversation,
)
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id, decode_optional_global_id
from weflux.models import ConversationStatus
from weflux.services import contacts as contact_service
from weflux.services import conversations as conversation_service
from weflux.services.phone_numbers import TYPED_PHONE_NUMBER


@strawberry.input(description="A new contact.")
class CreateContactInput:
    phone_number: str = strawberry.field(description=TYPED_PHONE_NUMBER)
    name: str | None = strawberry.field(
        default=None,
        description="The team's name for the contact, kept whatever their WhatsApp profile "
        "name becomes. Null or blank: none (the profile name shows once they write).",
    )


@strawberry.input(description="A contact's new name; null or blank clears the team's name.")
class UpdateContactInput:
    id: strawberry.ID = strawberry.field(description="The contact's id.")
    name: str | None = strawberry.field(
        default=strawberry.UNSET,
        description="Omitted: unchanged. A name: the team's name, which WhatsApp profile "
        "names never replace. Null or blank: the team's name is removed and `name` is the "
        "WhatsApp profile name again.",
    )


@strawberry.input(description="Who handles a conversation.")
class AssignConversationInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation's id.")
    assignee_id: strawberry.ID | None = strawberry.field(
        default=None, description="A Member's id; null unassigns."
    )


@strawberry.input(description="A conversation's new status.")
class UpdateConversationStatusInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation's id.")
    status: ConversationStatus = strawberry.field(description="Its new status.")


@strawberry.type
class InboxMutation:
    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_CONTACTS,
            "Add a contact; CONFLICT when the number exists already.",
        )
    )
    async def create_contact(
        self,
        info: Info[Context, None],
        input: Annotated[
            CreateContactInput, strawberry.argument(description="The number and a name.")
        ],
    ) -> Contact:
        row = await contact_service.create_contact(
            info.context.unit, info.context.actor, input.phone_number, input.name
        )
        return to_contact(row)

    @strawberry.mutation(
        **guarded(Permission.MANAGE_CONTACTS, "Rename a contact: set or remove the team's name.")
    )
    async def update_contact(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateContactInput, strawberry.argument(description="The contact and its name.")
        ],
    ) -> Contact:
        context = info.context
        contact_id = decode_global_id(input.id, "Contact")
        if input.name is strawberry.UNSET:
            row = await contact_service.get_contact(context.unit, contact_id)
        else:
            row = await contact_service.update_contact(
                context.unit, context.actor, contact_id, name=input.name
            )
        return to_contact(row)

    @strawberry.mutation(
        **guarded(
            Permission.ASSIGN_SELF,
            "Assign a visible conversation to a member, or unassign it (null). To any "
            f"member: {who_may(Permission.ASSIGN_ANYONE)}; the others may only take an "
            "unassigned one or give up their own (FORBIDDEN otherwise).",
        )
    )
    async def assign_conversation(
        self,
        info: Info[Context, None],
        input: Annotated[
            AssignConversationInput,
            strawberry.argument(description="The conversation and its new assignee."),
        ],
    ) -> Conversation:
        context = info.context
        row = await conversation_service.assign(
            context.unit,
            context.actor,
            decode_global_id(input.conversation_id, "Conversation"),
            decode_optional_global_id(input.assignee_id, "Member"),
            broker=info.context.broker,
        )
        return to_conversation(row)

    @strawberry.mutation(
        **guarded(Permission.REPLY, "Open, park (PENDING) or resolve a visible conversation.")
    )
    async def update_conversation_status(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateConversationStatusInput,
            strawberry.argument(description="The conversation and its new status."),
        ],
    ) -> Conversation:
        context = info.context
        row = await conversation_service.update_status(
            context.unit,
            context.actor,
            decode_global_id(input.conversation_id, "Conversation"),
            input.status,
            broker=info.context.broker,
        )
        return to_conversation(row)

    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Mark a visible conversation read for the whole team (its unread count becomes 0).",
        )
    )
    async def mark_conversation_read(
        self,
        info: Info[Context, None],
        conversation_id: Annotated[
            strawberry.ID, strawberry.argument(description="The conversation's id.")
        ],
    ) -> Conversation:
        context = info.context
        row = await conversation_service.mark_read(
            context.unit,
            context.actor,
            decode_global_id(conversation_id, "Conversation"),
            broker=info.context.broker,
        )
        return to_conversation(row)
