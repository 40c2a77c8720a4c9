"""Reads of the inbox: conversation and contact lists, one conversation."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission, who_may
from weflux.gql.context import Context
from weflux.gql.inbox.types import (
    Contact,
    Conversation,
    prefetch_conversations,
    to_contact,
    to_conversation,
)
from weflux.gql.permissions import guarded
from weflux.gql.prefetch import node_selection
from weflux.gql.types import After, Connection, First, to_connection
from weflux.ids import decode_global_id, decode_optional_global_id
from weflux.models import ConversationStatus
from weflux.pagination import MAX_PAGE
from weflux.services import contacts as contact_service
from weflux.services import conversations as conversation_service
from weflux.services.conversations import MAX_SEARCH, AssigneeFilter


@strawberry.type
class InboxQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "Conversations the caller may see, newest activity first (`lastMessageAt`). "
            f"Only {who_may(Permission.SEE_ALL_CONVERSATIONS)} see all of them; the others "
            "see their own and unassigned ones. `labelId` keeps those carrying the label. "
            f"At most {MAX_PAGE} a page.",
        )
    )
    async def conversations(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        status: Annotated[
            ConversationStatus | None,
            strawberry.argument(description="Only conversations in this status; null: any."),
        ] = None,
        assignee: Annotated[
            AssigneeFilter | None,
            strawberry.argument(description="Whose conversations; null is ANY."),
        ] = AssigneeFilter.ANY,
        search: Annotated[
            str | None,
            strawberry.argument(
                description="Text in the contact's name, WhatsApp profile name, phone number "
                f"or WhatsApp id (case-insensitive; at most {MAX_SEARCH} characters); null or "
                "blank: everything."
            ),
        ] = None,
        label_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Only conversations carrying this Label; null: any."),
        ] = None,
    ) -> Connection[Conversation]:
        page = await conversation_service.list_conversations(
            info.context.unit,
            info.context.actor,
            first=first,
            after=after,
            status=status,
            assignee=assignee or AssigneeFilter.ANY,
            search=search,
            label=decode_optional_global_id(label_id, "Label"),
        )
        rows = [row for row, _ in page.items]
        await prefetch_conversations(info.context.loaders, rows, node_selection(info))
        return to_connection(page, to_conversation)

    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "One conversation; NOT_FOUND when it is outside the caller's reach.",
        )
    )
    async def conversation(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The conversation's id.")],
    ) -> Conversation | None:
        row = await conversation_service.get_conversation(
            info.context.unit, decode_global_id(id, "Conversation")
        )
        return to_conversation(row)

    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "Contacts by name, unnamed ones last. Only "
            f"{who_may(Permission.MANAGE_CONTACTS)} see all of them; the others see those of "
            f"conversations they may see. At most {MAX_PAGE} a page.",
        )
    )
    async def contacts(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        search: Annotated[
            str | None,
            strawberry.argument(
                description="Text in the contact's name, WhatsApp profile name, phone number "
                f"or WhatsApp id (case-insensitive; at most {MAX_SEARCH} characters); null or "
                "blank: everything."
            ),
        ] = None,
    ) -> Connection[Contact]:
        page = await contact_service.list_contacts(
            info.context.unit, info.context.actor, first=first, after=after, search=search
        )
        return to_connection(page, to_contact)
