"""The parser's structured content: locations, contact cards, the contact's choices."""

from __future__ import annotations

import math

import pytest

from weflux.whatsapp.parser import (
    CardEmail,
    CardPhone,
    ReplyKind,
    contact_cards_of,
    interactive_reply_of,
    location_of,
)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {},
        {"latitude": 12.5},
        {"latitude": "north", "longitude": 1},
        {"latitude": 91, "longitude": 0},
        {"latitude": 0, "longitude": -181},
        {"latitude": math.nan, "longitude": 0},
        {"latitude": True, "longitude": 0},
    ],
)
def test_a_location_without_valid_coordinates_is_none(payload: object) -> None:
    """Given a location object that is missing, malformed or out of range
    When it is read
    Then there is no Location (the message keeps its text and raw payload)."""
    assert location_of(payload) is None


def test_a_location_takes_numbers_or_numeric_strings() -> None:
    """Given coordinates as strings and an empty name
    When read
    Then they are floats and the empty name is null."""
    found = location_of({"latitude": "-33.86", "longitude": "151.21", "name": "", "address": "x"})
    assert found is not None
    assert (found.latitude, found.longitude, found.name, found.address) == (
        -33.86,
        151.21,
        None,
        "x",
    )


def test_a_contact_card_keeps_names_phones_emails_and_company() -> None:
    """Given a full card as Meta documents it, and junk beside it
    When the cards are read
    Then the full card is typed, entries without a value are skipped, and junk is ignored."""
    cards = contact_cards_of(
        [
            {
                "name": {"formatted_name": "Ada Lovelace", "first_name": "Ada", "last_name": "L"},
                "org": {"company": "Analytical Engines", "title": "Countess"},
                "phones": [{"phone": "+44 20 7946 0958", "type": "WORK"}, {"type": "HOME"}, "x"],
                "emails": [
                    {"email": "ada@example.com", "type": "WORK"},
                    {"email": ["not", "text"]},
                ],
            },
            "not a card",
        ]
    )
    assert len(cards) == 1
    card = cards[0]
    assert (card.name, card.first_name, card.last_name, card.organization) == (
        "Ada Lovelace",
        "Ada",
        "L",
        "Analytical Engines",
    )
    assert card.phones == (CardPhone("+44 20 7946 0958", None, "WORK"),)
    assert card.emails == (CardEmail("ada@example.com", "WORK"),)
    assert contact_cards_of({"name": "not a list"}) == ()


def test_choices_are_read_from_interactive_and_button_messages_only() -> None:
    """Given a list reply, a flow reply, a template's quick reply and a text
    When the choice is read
    Then the list row and the quick reply are typed; the others have none."""
    row = {"list_reply": {"id": "r1", "title": "Tuesday", "description": "AM"}}
    assert interactive_reply_of("interactive", row) is not None
    listed = interactive_reply_of("interactive", row)
    assert listed is not None
    assert (listed.kind, listed.id, listed.title, listed.description) == (
        ReplyKind.LIST_REPLY,
        "r1",
        "Tuesday",
        "AM",
    )
    flow = {"type": "nfm_reply", "nfm_reply": {"body": "Sent", "response_json": "{}"}}
    assert interactive_reply_of("interactive", flow) is None
    quick = interactive_reply_of("button", {"payload": "STOP", "text": "Stop promotions"})
    assert quick is not None
    assert (quick.kind, quick.id, quick.title) == (ReplyKind.QUICK_REPLY, "STOP", "Stop promotions")
    assert interactive_reply_of("button", {}) is None
    assert interactive_reply_of("text", {"body": "hi"}) is None
    assert interactive_reply_of("interactive", {"button_reply": {"id": "b", "title": ""}}) is None
