"""Reads of the inbox: conversation and contact lists, one conversation."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from weflux.gql.context import Context
from weflux.gql.inbox.types import Contact, Conversation, to_contact, to_conversation
from weflux.gql.permissions import READ
from weflux.gql.types import Connection, to_connection
from weflux.ids import decode_global_id
from weflux.models import ConversationStatus
from weflux.pagination import MAX_PAGE
from weflux.services import contacts as contact_service
from weflux.services import conversations as conversation_service
from weflux.services.conversations import AssigneeFilter


@strawberry.type
class InboxQuery:
    @strawberry.field(
        description="Conversations the caller may see (Agents: their own and unassigned ones), "
        "newest activity first. `search` matches the contact's name, phone number or "
        f"WhatsApp id. At most {MAX_PAGE} a page.",
        permission_classes=READ,
    )
    async def conversations(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        status: ConversationStatus | None = None,
        assignee: AssigneeFilter | None = AssigneeFilter.ANY,
        search: str | None = None,
    ) -> Connection[Conversation]:
        page = await conversation_service.list_conversations(
            info.context.unit,
            info.context.actor,
            first=first,
            after=after,
            status=status,
            assignee=assignee or AssigneeFilter.ANY,
            search=search,
        )
        return to_connection(page, to_conversation)

    @strawberry.field(
        description="One conversation; NOT_FOUND when it is outside the caller's reach.",
        permission_classes=READ,
    )
    async def conversation(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> Conversation | None:
        row = await conversation_service.get_conversation(
            info.context.unit, decode_global_id(id, "Conversation")
        )
        return to_conversation(row)

    @strawberry.field(
        description="Contacts by name (Agents: those of conversations they may see). "
        f"`search` matches name, phone number or WhatsApp id. At most {MAX_PAGE} a page.",
        permission_classes=READ,
    )
    async def contacts(
        self,
        info: Info[Context, None],
        first: int | None = None,
        after: str | None = None,
        search: str | None = None,
    ) -> Connection[Contact]:
        page = await contact_service.list_contacts(
            info.context.unit, info.context.actor, first=first, after=after, search=search
        )
        return to_connection(page, to_contact)
