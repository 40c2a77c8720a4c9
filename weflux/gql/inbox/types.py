"""GraphQL types of the shared inbox: contacts, conversations, messages.

They are kept apart from the ORM rows (`to_x(row)` converters); related objects are
loaded through the request's DataLoaders, so a page costs a constant number of queries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.errors import NotFound
from weflux.gql.channels.types import WhatsAppAccount, to_whatsapp_account
from weflux.gql.context import Context
from weflux.gql.cost import LIST_NODES
from weflux.gql.identity.types import Member, member_of
from weflux.gql.inbox.content_types import (
    MAX_CARDS,
    MAX_REACTIONS,
    ContactCard,
    InteractiveReply,
    Location,
    Reaction,
    contact_cards_of,
    interactive_reply_of,
    location_of,
    to_reaction,
)
from weflux.gql.inbox.media_types import Media, to_media
from weflux.gql.inbox.team_types import Label, Note, to_label, to_note
from weflux.gql.loaders import Loaders
from weflux.gql.prefetch import direct, node_selection, prefetch, related
from weflux.gql.types import (
    After,
    Before,
    Connection,
    First,
    Last,
    Node,
    graphql_enum,
    to_connection,
)
from weflux.ids import encode_global_id
from weflux.models import (
    CONVERSATION_STATUS_MEANINGS,
    MESSAGE_DIRECTION_MEANINGS,
    MESSAGE_STATUS_MEANINGS,
    MESSAGE_TYPE_MEANINGS,
    ConversationStatus,
    MessageDirection,
    MessageStatus,
    MessageType,
)
from weflux.pagination import (
    DEFAULT_PAGE,
    MAX_PAGE,
    decode_cursor,
    encode_cursor,
    encode_update_cursor,
)
from weflux.services import conversations as conversation_service
from weflux.services import teamtools
from weflux.services.conversations import ASSIGNEE_FILTER_MEANINGS, AssigneeFilter
from weflux.services.outbound import service_window_expires_at

graphql_enum(
    ConversationStatus,
    description="Where a conversation stands in the team's work.",
    values=CONVERSATION_STATUS_MEANINGS,
)
graphql_enum(
    MessageDirection,
    description="Who wrote a message: the contact (INBOUND) or the team (OUTBOUND).",
    values=MESSAGE_DIRECTION_MEANINGS,
)
graphql_enum(
    MessageStatus,
    description="Delivery state: inbound messages are RECEIVED; outbound ones move forward "
    "QUEUED, SENDING, SENT, DELIVERED, READ (a step may be skipped, never undone), or end "
    "FAILED.",
    values=MESSAGE_STATUS_MEANINGS,
)
graphql_enum(
    MessageType,
    description="What a message is, as WhatsApp names its kinds.",
    values=MESSAGE_TYPE_MEANINGS,
)
graphql_enum(
    AssigneeFilter,
    description="Whose conversations to list.",
    values=ASSIGNEE_FILTER_MEANINGS,
)


@strawberry.type(description="A customer who writes to the workspace on WhatsApp.")
class Contact(Node):
    id: strawberry.ID = strawberry.field(description="The contact's global id.")
    name: str | None = strawberry.field(
        description="The name to show: the team's name for the contact when it set one "
        "(`nameSetByTeam`), else the contact's WhatsApp profile name; null when neither "
        "is known. A profile name never replaces the team's name."
    )
    profile_name: str | None = strawberry.field(
        description="The contact's latest WhatsApp profile name, updated by each inbound "
        "message that carries one; null until then. The contact chooses it, not the team."
    )
    name_set_by_team: bool = strawberry.field(
        description="Whether `name` is the team's (createContact, updateContact); false "
        "when it is the WhatsApp profile name."
    )
    phone_number: str | None = strawberry.field(description="E.164, with the leading `+`.")
    wa_id: str | None = strawberry.field(description="The WhatsApp id: the number's digits.")
    user_id: str | None = strawberry.field(
        description="Meta's business-scoped user id, when WhatsApp shares it."
    )
    opted_out: bool = strawberry.field(description="Whether the contact asked not to be messaged.")


@strawberry.type(description="The thread between one contact and one of the workspace's numbers.")
class Conversation(Node):
    id: strawberry.ID = strawberry.field(description="The conversation's global id.")
    status: ConversationStatus = strawberry.field(
        description="Open, pending or resolved (updateConversationStatus)."
    )
    last_message_at: datetime | None = strawberry.field(
        description="When the latest message was written, in or out; the order of "
        "`conversations`. Null when it has none."
    )
    unread_count: int = strawberry.field(
        description="Inbound messages since the team last marked it read (markConversationRead)."
    )
    service_window_expires_at: datetime | None = strawberry.field(
        description="Until when free-form replies are allowed (24 h after the contact last "
        "wrote); after it, only templates. Null when the contact never wrote."
    )
    update_cursor: str = strawberry.field(
        description="Its latest change's position in the workspace's change feed: `after` "
        "of `conversationUpdated` to resume from it."
    )
    row_id: strawberry.Private[uuid.UUID]
    contact_id: strawberry.Private[uuid.UUID]
    account_id: strawberry.Private[uuid.UUID]
    assignee_membership_id: strawberry.Private[uuid.UUID | None]
    last_message_id: strawberry.Private[uuid.UUID | None]

    # Synchronous resolvers: their rows are prefetched for a page (`prefetch_conversations`)
    # and otherwise loaded through the request's DataLoaders (`related`).
    @strawberry.field(description="Who the conversation is with.")
    @direct
    def contact(self, info: Info[Context, None]) -> Contact:
        return related(info.context.loaders.contact, self.contact_id, _found_contact)

    @strawberry.field(description="The workspace's number the conversation runs on.")
    @direct
    def whats_app_account(self, info: Info[Context, None]) -> WhatsAppAccount:
        return related(info.context.loaders.whatsapp_account, self.account_id, _found_account)

    @strawberry.field(description="The member handling it; null when unassigned.")
    @direct
    def assignee(self, info: Info[Context, None]) -> Member | None:
        if self.assignee_membership_id is None:
            return None
        return related(info.context.loaders.membership, self.assignee_membership_id, member_of)

    @strawberry.field(description="The latest message, in or out.")
    @direct
    def last_message(self, info: Info[Context, None]) -> Message | None:
        if self.last_message_id is None:
            return None
        return related(info.context.loaders.message, self.last_message_id, _message_of)

    @strawberry.field(
        description="The history, oldest first and newest LAST: `last`/`before` scroll back, "
        f"`first`/`after` read forwards. Without arguments: the latest {DEFAULT_PAGE}. "
        f"At most {MAX_PAGE} a page."
    )
    async def messages(
        self,
        info: Info[Context, None],
        first: First = None,
        after: After = None,
        last: Last = None,
        before: Before = None,
    ) -> Connection[Message]:
        page = await conversation_service.list_messages(
            info.context.unit,
            self.row_id,
            first=first,
            after=decode_cursor(after) if after else None,
            last=last,
            before=decode_cursor(before, "before") if before else None,
        )
        rows = [row for row, _ in page.items]
        await prefetch_messages(info.context.loaders, rows, node_selection(info))
        return to_connection(page, to_message)

    @strawberry.field(description="Its labels, by name.")
    @direct
    def labels(self, info: Info[Context, None]) -> list[Label]:
        return related(info.context.loaders.conversation_labels, self.row_id, _labels_of)

    @strawberry.field(
        description="The team's private notes on it, oldest first (never sent to WhatsApp). "
        f"At most {MAX_PAGE} a page."
    )
    async def notes(
        self, info: Info[Context, None], first: First = None, after: After = None
    ) -> Connection[Note]:
        page = await teamtools.list_notes(
            info.context.unit,
            self.row_id,
            first=first,
            after=decode_cursor(after) if after else None,
        )
        return to_connection(page, to_note)


@strawberry.type(description="One WhatsApp message, inbound or outbound.")
class Message(Node):
    id: strawberry.ID = strawberry.field(description="The message's global id.")
    cursor: str = strawberry.field(
        description="This message's place in its history: `after`/`before` of "
        "`Conversation.messages`, and `after` of `messageAdded` to resume from it."
    )
    update_cursor: str = strawberry.field(
        description="Its latest change's (status change's, or creation's) position in the "
        "workspace's change feed: `after` of `messageUpdated` to resume from it."
    )
    direction: MessageDirection = strawberry.field(description="Inbound or outbound.")
    type: MessageType = strawberry.field(
        description="What it is: text, an image, a template, … (what `text` holds depends "
        "on it; see MessageType)."
    )
    text: str | None = strawberry.field(
        description="What to show: the text, a caption, a summary of a location, order or "
        "contact card; null when there is none."
    )
    status: MessageStatus = strawberry.field(
        description="Where delivery stands; `messageUpdated` announces each change."
    )
    error_code: int | None = strawberry.field(
        description="Meta's error code when FAILED (say 131047: outside the 24-hour "
        "window); null otherwise."
    )
    error_title: str | None = strawberry.field(
        description="Meta's error title when FAILED, in English; null otherwise."
    )
    created_at: datetime = strawberry.field(
        description="When it was written: the contact's send time for inbound messages, the "
        "time it was queued for outbound ones."
    )
    wa_message_id: str | None = strawberry.field(
        description="WhatsApp's id of it (wamid); null until an outbound message is SENT."
    )
    conversation_id: strawberry.Private[uuid.UUID]
    sent_by_membership_id: strawberry.Private[uuid.UUID | None]
    reply_to_wa_message_id: strawberry.Private[str | None]
    media_file_id: strawberry.Private[uuid.UUID | None]
    row: strawberry.Private[models.Message]  # its payload: read only when a field asks

    # Computed from the stored payload when selected, never loaded.
    @strawberry.field(description="The shared place of a LOCATION message; null for other types.")
    @direct
    def location(self, info: Info[Context, None]) -> Location | None:
        return location_of(self.row)

    @strawberry.field(
        description=f"The contact cards of a CONTACTS message, in the order shared (the first "
        f"{MAX_CARDS}); null for other types.",
        metadata={LIST_NODES: MAX_CARDS},
    )
    @direct
    def contacts(self, info: Info[Context, None]) -> list[ContactCard] | None:
        return contact_cards_of(self.row)

    @strawberry.field(
        description="The button or list row the contact chose (an INTERACTIVE reply, or a "
        "BUTTON message: a template's quick reply); null otherwise."
    )
    @direct
    def interactive_reply(self, info: Info[Context, None]) -> InteractiveReply | None:
        return interactive_reply_of(self.row)

    @strawberry.field(
        description="The emoji reactions to it, oldest first (the first "
        f"{MAX_REACTIONS}): one per reactor (the contact, each member); a new emoji replaces "
        "the reactor's, an unreaction removes it. `messageUpdated` announces each change. "
        "A reaction is never a message of its own.",
        metadata={LIST_NODES: MAX_REACTIONS},
    )
    @direct
    def reactions(self, info: Info[Context, None]) -> list[Reaction]:
        if self.wa_message_id is None:
            return []
        return related(info.context.loaders.reactions, self.wa_message_id, _reactions_of)

    @strawberry.field(
        description="The message this one quotes (WhatsApp's reply), when it is in the "
        "workspace and visible to the caller; null otherwise (not a reply, or a message we "
        "do not have)."
    )
    @direct
    def reply_to(self, info: Info[Context, None]) -> Message | None:
        if self.reply_to_wa_message_id is None:
            return None
        loader = info.context.loaders.message_by_wamid
        return related(loader, self.reply_to_wa_message_id, _message_of)

    @strawberry.field(description="The conversation it belongs to.")
    @direct
    def conversation(self, info: Info[Context, None]) -> Conversation:
        return related(info.context.loaders.conversation, self.conversation_id, _found_conversation)

    @strawberry.field(description="The member who sent it (outbound); null otherwise.")
    @direct
    def sent_by(self, info: Info[Context, None]) -> Member | None:
        if self.sent_by_membership_id is None:
            return None
        return related(info.context.loaders.membership, self.sent_by_membership_id, member_of)

    @strawberry.field(
        description="The photo, video, voice note, document or sticker it carries; null for "
        "other kinds, and once its file is deleted (the contact who sent it was erased, even "
        "where the team sent it on). Inbound files appear at once and become downloadable "
        "(`downloadPath`) when the worker has fetched them from WhatsApp (`messageUpdated` "
        "says so)."
    )
    @direct
    def media(self, info: Info[Context, None]) -> Media | None:
        if self.media_file_id is None:
            return None
        if self.direction == MessageDirection.OUTBOUND:
            # One upload may be sent several times, each with its own caption (the
            # message's text): the file's row has none of them.
            caption = self.text
            return related(
                info.context.loaders.media_file,
                self.media_file_id,
                lambda row: _sent_media_of(row, caption),
            )
        return related(info.context.loaders.media_file, self.media_file_id, _media_of)


ContactConnection = Connection[Contact]
ConversationConnection = Connection[Conversation]
MessageConnection = Connection[Message]


def to_contact(row: models.Contact) -> Contact:
    return Contact(
        id=strawberry.ID(encode_global_id("Contact", row.id)),
        name=row.name,
        profile_name=row.profile_name,
        name_set_by_team=row.name_set_by_team,
        phone_number=row.phone_number,
        wa_id=row.wa_id,
        user_id=row.user_id,
        opted_out=row.opted_out,
    )


def to_conversation(row: models.Conversation) -> Conversation:
    return Conversation(
        id=strawberry.ID(encode_global_id("Conversation", row.id)),
        status=row.status,
        last_message_at=row.last_message_at,
        unread_count=row.unread_count,
        service_window_expires_at=service_window_expires_at(row),
        update_cursor=encode_update_cursor(row.update_seq),
        row_id=row.id,
        contact_id=row.contact_id,
        account_id=row.account_id,
        assignee_membership_id=row.assignee_membership_id,
        last_message_id=row.last_message_id,
    )


def _found_contact(row: models.Contact | None) -> Contact:
    if row is None:
        raise NotFound("Contact not found")
    return to_contact(row)


def _found_account(row: models.WhatsAppAccount | None) -> WhatsAppAccount:
    if row is None:
        raise NotFound("WhatsApp account not found")
    return to_whatsapp_account(row)


def _found_conversation(row: models.Conversation | None) -> Conversation:
    if row is None:
        raise NotFound("Conversation not found")
    return to_conversation(row)


def _message_of(row: models.Message | None) -> Message | None:
    return to_message(row) if row is not None else None


def _labels_of(rows: list[models.Label]) -> list[Label]:
    return [to_label(row) for row in rows]


def _reactions_of(rows: list[models.MessageReaction]) -> list[Reaction]:
    return [to_reaction(row) for row in rows[:MAX_REACTIONS]]


def _media_of(row: models.MediaFile | None) -> Media | None:
    return to_media(row) if row is not None else None


def _sent_media_of(row: models.MediaFile | None, caption: str | None) -> Media | None:
    """The file of an outbound message, with that message's caption (or none)."""
    media = _media_of(row)
    if media is not None:
        media.caption = caption
    return media


async def prefetch_conversations(
    loaders: Loaders, rows: Sequence[models.Conversation], wanted: set[str]
) -> None:
    """Load ahead the related rows that `wanted` (`node_selection`) asks of a page.

    One statement per kind, as the per-row resolvers would batch them; a field added to
    Conversation whose rows come from a DataLoader belongs here too, or its resolver
    falls back to awaiting the loader row by row (still one statement, but slower).
    """
    loads: list[Awaitable[Any]] = []
    if "contact" in wanted:
        loads.append(prefetch(loaders.contact, [row.contact_id for row in rows]))
    if "whatsAppAccount" in wanted:
        loads.append(prefetch(loaders.whatsapp_account, [row.account_id for row in rows]))
    if "labels" in wanted:
        loads.append(prefetch(loaders.conversation_labels, [row.id for row in rows]))
    loads.append(_prefetch_last_messages(loaders, rows, wanted))
    if "assignee" in wanted:
        ids = [row.assignee_membership_id for row in rows if row.assignee_membership_id]
        loads.append(_prefetch_members(loaders, ids, "assignee.user" in wanted))
    await asyncio.gather(*loads)


async def _prefetch_last_messages(
    loaders: Loaders, rows: Sequence[models.Conversation], wanted: set[str]
) -> None:
    """The last messages, then what the selection asks of them (`prefetch_messages`)."""
    if "lastMessage" not in wanted:
        return
    ids = [row.last_message_id for row in rows if row.last_message_id is not None]
    messages = [message for message in await prefetch(loaders.message, ids) if message]
    await prefetch_messages(loaders, messages, wanted, "lastMessage.")


async def prefetch_messages(
    loaders: Loaders, messages: Sequence[models.Message], wanted: set[str], prefix: str = ""
) -> None:
    """Load ahead what `wanted` asks of these messages (its paths under `prefix`).

    One statement per kind, and only the kinds selected: media, reactions, replyTo,
    sentBy (and its user), conversation. location, contacts and interactiveReply come
    from the message's own payload and updateCursor from a column: nothing to load. A
    field added to Message whose rows come from a DataLoader belongs here too.
    """
    loads: list[Awaitable[Any]] = []
    if prefix + "media" in wanted:
        files = [message.media_file_id for message in messages if message.media_file_id]
        loads.append(prefetch(loaders.media_file, files))
    if prefix + "reactions" in wanted:
        wamids = [message.wa_message_id for message in messages if message.wa_message_id]
        loads.append(prefetch(loaders.reactions, wamids))
    if prefix + "replyTo" in wanted:
        quoted = [m.reply_to_wa_message_id for m in messages if m.reply_to_wa_message_id]
        loads.append(prefetch(loaders.message_by_wamid, quoted))
    if prefix + "conversation" in wanted:
        loads.append(prefetch(loaders.conversation, [m.conversation_id for m in messages]))
    if prefix + "sentBy" in wanted:
        senders = [m.sent_by_membership_id for m in messages if m.sent_by_membership_id]
        loads.append(_prefetch_members(loaders, senders, prefix + "sentBy.user" in wanted))
    await asyncio.gather(*loads)


async def _prefetch_members(loaders: Loaders, ids: list[uuid.UUID], users: bool) -> None:
    members = await prefetch(loaders.membership, ids)
    if users:
        await prefetch(loaders.user, [member.user_id for member in members if member])


def _message_type(value: str) -> MessageType:
    try:
        return MessageType(value)
    except ValueError:
        return MessageType.UNSUPPORTED


def to_message(row: models.Message) -> Message:
    return Message(
        id=strawberry.ID(encode_global_id("Message", row.id)),
        cursor=encode_cursor(row.id),
        update_cursor=encode_update_cursor(row.update_seq),
        direction=row.direction,
        type=_message_type(row.type),
        text=row.text,
        status=row.status,
        error_code=row.error_code,
        error_title=row.error_title,
        created_at=row.created_at,
        wa_message_id=row.wa_message_id,
        conversation_id=row.conversation_id,
        sent_by_membership_id=row.sent_by_membership_id,
        reply_to_wa_message_id=row.reply_to_wa_message_id,
        media_file_id=row.media_file_id,
        row=row,
    )
