"""Labels, private notes and canned replies: reads and writes.

ADMIN and MANAGER manage labels and canned replies; every member lists them, labels
the conversations they see, and writes notes on them (weflux.services.teamtools).
"""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.context import Context
from weflux.gql.inbox.team_types import (
    CannedReply,
    Label,
    Note,
    to_canned_reply,
    to_label,
    to_note,
)
from weflux.gql.inbox.types import Conversation, to_conversation
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.services import teamtools

LABEL_ID = Annotated[strawberry.ID, strawberry.argument(description="The Label's id.")]
REPLY_ID = Annotated[strawberry.ID, strawberry.argument(description="The CannedReply's id.")]


@strawberry.input(description="A new label.")
class CreateLabelInput:
    name: str = strawberry.field(description="1 to 64 characters.")
    color: str = strawberry.field(description='"#rrggbb" (six hexadecimal digits).')


@strawberry.input(description="A label's new name or colour; an omitted field stays.")
class UpdateLabelInput:
    id: strawberry.ID = strawberry.field(description="The Label's id.")
    name: str | None = strawberry.field(default=None, description="1 to 64 characters.")
    color: str | None = strawberry.field(default=None, description='"#rrggbb".')


@strawberry.input(description="The full set of labels a conversation carries from now on.")
class SetConversationLabelsInput:
    conversation_id: strawberry.ID = strawberry.field(description="A visible conversation.")
    label_ids: list[strawberry.ID] = strawberry.field(
        description="Labels of the workspace (at most 20); empty removes them all."
    )


@strawberry.input(description="A private note on a conversation.")
class AddNoteInput:
    conversation_id: strawberry.ID = strawberry.field(description="A visible conversation.")
    text: str = strawberry.field(description="1 to 10000 characters; never sent to WhatsApp.")


@strawberry.input(description="A new canned reply.")
class CreateCannedReplyInput:
    shortcut: str = strawberry.field(
        description="1 to 64 letters, digits, `-` and `_`; unique in the workspace (CONFLICT)."
    )
    text: str = strawberry.field(description="1 to 4096 characters.")


@strawberry.input(description="A canned reply's new shortcut or text; an omitted field stays.")
class UpdateCannedReplyInput:
    id: strawberry.ID = strawberry.field(description="The CannedReply's id.")
    shortcut: str | None = strawberry.field(
        default=None, description="Letters, digits, `-` and `_`; unique (CONFLICT)."
    )
    text: str | None = strawberry.field(default=None, description="1 to 4096 characters.")


@strawberry.type
class TeamToolsQuery:
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "The workspace's labels, by name.",
        )
    )
    async def labels(self, info: Info[Context, None]) -> list[Label]:
        return [to_label(row) for row in await teamtools.list_labels(info.context.unit)]

    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "The workspace's canned replies, by shortcut. `search` matches a "
            "shortcut's prefix (a leading `/` is ignored) or a text holding all its words.",
        )
    )
    async def canned_replies(
        self,
        info: Info[Context, None],
        search: Annotated[
            str | None,
            strawberry.argument(
                description="A shortcut's beginning, or words all found in the text "
                "(case-insensitive; at most 100 characters); null or blank: every reply."
            ),
        ] = None,
    ) -> list[CannedReply]:
        rows = await teamtools.list_canned_replies(info.context.unit, search)
        return [to_canned_reply(row) for row in rows]


@strawberry.type
class TeamToolsMutation:
    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Create a label.",
        )
    )
    async def create_label(
        self,
        info: Info[Context, None],
        input: Annotated[
            CreateLabelInput, strawberry.argument(description="The label's name and colour.")
        ],
    ) -> Label:
        context = info.context
        row = await teamtools.create_label(
            context.unit, context.actor, input.name, input.color, meta=context.meta
        )
        return to_label(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Rename or recolour a label.",
        )
    )
    async def update_label(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateLabelInput, strawberry.argument(description="The label and what changes.")
        ],
    ) -> Label:
        context = info.context
        row = await teamtools.update_label(
            context.unit,
            context.actor,
            decode_global_id(input.id, "Label"),
            name=input.name,
            color=input.color,
            meta=context.meta,
            broker=context.broker,
        )
        return to_label(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Delete a label, also from every conversation. Answers the removed id.",
        )
    )
    async def delete_label(self, info: Info[Context, None], id: LABEL_ID) -> strawberry.ID:
        context = info.context
        await teamtools.delete_label(
            context.unit,
            context.actor,
            decode_global_id(id, "Label"),
            meta=context.meta,
            broker=context.broker,
        )
        return id

    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Replace the labels of a visible conversation.",
        )
    )
    async def set_conversation_labels(
        self,
        info: Info[Context, None],
        input: Annotated[
            SetConversationLabelsInput,
            strawberry.argument(description="The conversation and its labels from now on."),
        ],
    ) -> Conversation:
        context = info.context
        row = await teamtools.set_conversation_labels(
            context.unit,
            context.actor,
            context.broker,
            decode_global_id(input.conversation_id, "Conversation"),
            [decode_global_id(label_id, "Label") for label_id in input.label_ids],
        )
        return to_conversation(row)

    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Write a private note on a visible conversation; never sent to WhatsApp.",
        )
    )
    async def add_note(
        self,
        info: Info[Context, None],
        input: Annotated[
            AddNoteInput, strawberry.argument(description="The conversation and the note.")
        ],
    ) -> Note:
        context = info.context
        row = await teamtools.add_note(
            context.unit,
            context.actor,
            context.broker,
            decode_global_id(input.conversation_id, "Conversation"),
            input.text,
        )
        return to_note(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Create a canned reply; CONFLICT when the shortcut is taken.",
        )
    )
    async def create_canned_reply(
        self,
        info: Info[Context, None],
        input: Annotated[
            CreateCannedReplyInput, strawberry.argument(description="The shortcut and the text.")
        ],
    ) -> CannedReply:
        context = info.context
        row = await teamtools.create_canned_reply(
            context.unit, context.actor, input.shortcut, input.text, meta=context.meta
        )
        return to_canned_reply(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Change a canned reply; CONFLICT when the shortcut is taken.",
        )
    )
    async def update_canned_reply(
        self,
        info: Info[Context, None],
        input: Annotated[
            UpdateCannedReplyInput,
            strawberry.argument(description="The canned reply and what changes."),
        ],
    ) -> CannedReply:
        context = info.context
        row = await teamtools.update_canned_reply(
            context.unit,
            context.actor,
            decode_global_id(input.id, "CannedReply"),
            shortcut=input.shortcut,
            text=input.text,
            meta=context.meta,
        )
        return to_canned_reply(row)

    @strawberry.mutation(
        **guarded(
            Permission.MANAGE_TEAM_TOOLS,
            "Delete a canned reply. Answers the removed id.",
        )
    )
    async def delete_canned_reply(self, info: Info[Context, None], id: REPLY_ID) -> strawberry.ID:
        context = info.context
        await teamtools.delete_canned_reply(
            context.unit, context.actor, decode_global_id(id, "CannedReply"), meta=context.meta
        )
        return id
