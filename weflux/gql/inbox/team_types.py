"""GraphQL types of the team's tools: labels, private notes, canned replies."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.gql.context import Context
from weflux.gql.identity.types import Member, to_member
from weflux.gql.types import Connection, Node
from weflux.ids import encode_global_id


@strawberry.type(description="A workspace-wide tag for conversations.")
class Label(Node):
    id: strawberry.ID = strawberry.field(description="The label's global id.")
    name: str = strawberry.field(description="What the label says (1 to 64 characters).")
    color: str = strawberry.field(description='Its colour, "#rrggbb" in lower case.')


@strawberry.type(
    description="A private note of the team on a conversation; never sent to WhatsApp."
)
class Note(Node):
    id: strawberry.ID = strawberry.field(description="The note's global id.")
    text: str = strawberry.field(description="The note.")
    created_at: datetime = strawberry.field(description="When it was written.")
    author_membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(description="The member who wrote it; null once they left the workspace.")
    async def author(self, info: Info[Context, None]) -> Member | None:
        if self.author_membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.author_membership_id)
        return to_member(row) if row is not None else None


@strawberry.type(description="A saved answer, found by its shortcut.")
class CannedReply(Node):
    id: strawberry.ID = strawberry.field(description="The canned reply's global id.")
    shortcut: str = strawberry.field(
        description="Letters, digits, `-` and `_`; unique in the workspace."
    )
    text: str = strawberry.field(description="The text to insert in a reply.")


NoteConnection = Connection[Note]


def to_label(row: models.Label) -> Label:
    return Label(
        id=strawberry.ID(encode_global_id("Label", row.id)), name=row.name, color=row.color
    )


def to_note(row: models.Note) -> Note:
    return Note(
        id=strawberry.ID(encode_global_id("Note", row.id)),
        text=row.text,
        created_at=row.created_at,
        author_membership_id=row.author_membership_id,
    )


def to_canned_reply(row: models.CannedReply) -> CannedReply:
    return CannedReply(
        id=strawberry.ID(encode_global_id("CannedReply", row.id)),
        shortcut=row.shortcut,
        text=row.text,
    )
