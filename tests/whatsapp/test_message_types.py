"""The kinds of message the parser produces are the model's MessageType (the schema's enum)."""

from __future__ import annotations

from weflux.models import MessageType
from weflux.whatsapp.parser import MESSAGE_TYPES


def test_every_kind_the_parser_produces_is_a_message_type_and_back() -> None:
    """Given the parser's kinds of inbound message and the model enum
    When they are compared
    Then they are the same values, but TEMPLATE, which only the team sends."""
    assert {MessageType(kind) for kind in MESSAGE_TYPES} == set(MessageType) - {
        MessageType.TEMPLATE
    }
