"""GraphQL types of what a message holds besides its text: a location, contact cards, the
contact's choice of a button or list row, reactions. Read from the stored webhook
(`Message.payload`) by the parser's own functions, so older rows show them too."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from weflux import models
from weflux.gql.context import Context
from weflux.gql.cost import LIST_NODES
from weflux.gql.identity.types import Member, to_member
from weflux.gql.types import graphql_enum
from weflux.whatsapp import parser
from weflux.whatsapp.parser import ReplyKind

# What a message shows at most (and the bounds the cost of a query counts with).
MAX_CARDS = 10
MAX_CARD_ENTRIES = 5  # phones, emails of a card
MAX_REACTIONS = 20

graphql_enum(
    ReplyKind,
    name="InteractiveReplyKind",
    description="What the contact tapped.",
    values={
        ReplyKind.BUTTON_REPLY: "A reply button of an interactive button message.",
        ReplyKind.LIST_REPLY: "A row of an interactive list message.",
        ReplyKind.QUICK_REPLY: "A quick-reply button of a template (a BUTTON message).",
    },
)


@strawberry.type(description="A shared location: a pin, or a chosen place with its name.")
class Location:
    latitude: float = strawberry.field(description="Degrees north (-90 to 90).")
    longitude: float = strawberry.field(description="Degrees east (-180 to 180).")
    name: str | None = strawberry.field(description="The place's name, when one was chosen.")
    address: str | None = strawberry.field(description="The place's address, when known.")


@strawberry.type(description="A phone number on a shared contact card.")
class ContactCardPhone:
    phone: str = strawberry.field(description="The number as the card shows it.")
    wa_id: str | None = strawberry.field(
        description="Its WhatsApp id, when the number is on WhatsApp (Meta says so)."
    )
    type: str | None = strawberry.field(description="Its label on the card: CELL, HOME, WORK…")


@strawberry.type(description="An email address on a shared contact card.")
class ContactCardEmail:
    email: str = strawberry.field(description="The address as the card shows it.")
    type: str | None = strawberry.field(description="Its label on the card: HOME, WORK…")


@strawberry.type(description="A contact card the contact shared (a CONTACTS message).")
class ContactCard:
    name: str | None = strawberry.field(
        description="The name to show: the card's formatted name, else its first and last "
        "names, else its first phone number."
    )
    first_name: str | None = strawberry.field(description="The card's first name.")
    last_name: str | None = strawberry.field(description="The card's last name.")
    organization: str | None = strawberry.field(description="The card's company.")
    phones: list[ContactCardPhone] = strawberry.field(
        description=f"Its phone numbers (the first {MAX_CARD_ENTRIES}).",
        metadata={LIST_NODES: MAX_CARD_ENTRIES},
    )
    emails: list[ContactCardEmail] = strawberry.field(
        description=f"Its email addresses (the first {MAX_CARD_ENTRIES}).",
        metadata={LIST_NODES: MAX_CARD_ENTRIES},
    )


@strawberry.type(
    description="The contact's choice in answer to a button or list message, or a template's "
    "quick-reply button."
)
class InteractiveReply:
    kind: ReplyKind = strawberry.field(description="A reply button, a list row or a quick reply.")
    id: str | None = strawberry.field(
        description="The id the business gave the button or row (a quick reply's payload)."
    )
    title: str = strawberry.field(description="What the button or row said.")
    description: str | None = strawberry.field(description="A list row's description, if any.")


@strawberry.type(description="An emoji reaction to a message, by the contact or a member.")
class Reaction:
    emoji: str = strawberry.field(description="The emoji (one grapheme).")
    from_contact: bool = strawberry.field(
        description="Whether the contact reacted (true) or a member of the team (false)."
    )
    created_at: datetime = strawberry.field(description="When this emoji was set.")
    membership_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(
        description="The member who reacted; null for the contact's, or once they left."
    )
    async def member(self, info: Info[Context, None]) -> Member | None:
        if self.membership_id is None:
            return None
        row = await info.context.loaders.membership.load(self.membership_id)
        return to_member(row) if row is not None else None


def to_reaction(row: models.MessageReaction) -> Reaction:
    return Reaction(
        emoji=row.emoji,
        from_contact=row.contact_id is not None,
        created_at=row.created_at,
        membership_id=row.membership_id,
    )


def _content(row: models.Message) -> Any:
    """The type-named object of the stored webhook message (`raw[type]`), if any."""
    stored = row.payload if isinstance(row.payload, dict) else {}
    raw = stored.get("raw")
    return raw.get(row.type) if isinstance(raw, dict) else None


def location_of(row: models.Message) -> Location | None:
    if row.type != models.MessageType.LOCATION:
        return None
    found = parser.location_of(_content(row))
    if found is None:
        return None
    return Location(
        latitude=found.latitude, longitude=found.longitude, name=found.name, address=found.address
    )


def contact_cards_of(row: models.Message) -> list[ContactCard] | None:
    if row.type != models.MessageType.CONTACTS:
        return None
    return [
        ContactCard(
            name=card.name,
            first_name=card.first_name,
            last_name=card.last_name,
            organization=card.organization,
            phones=[
                ContactCardPhone(phone=p.phone, wa_id=p.wa_id, type=p.type) for p in card.phones
            ],
            emails=[ContactCardEmail(email=e.email, type=e.type) for e in card.emails],
        )
        for card in parser.contact_cards_of(_content(row))
    ]


def interactive_reply_of(row: models.Message) -> InteractiveReply | None:
    found = parser.interactive_reply_of(row.type, _content(row))
    if found is None:
        return None
    return InteractiveReply(
        kind=found.kind, id=found.id, title=found.title, description=found.description
    )
