"""The Cloud API bodies of outbound messages."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from weflux.models import Contact, Message, MessageDirection, MessageStatus
from weflux.whatsapp.payloads import build_payload


def test_a_username_only_contact_is_addressed_by_user_id() -> None:
    message = Message(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        direction=MessageDirection.OUTBOUND,
        type="text",
        text="hi",
        status=MessageStatus.SENDING,
    )
    payload = build_payload(message, Contact(user_id="US.13491208655302741918"))
    assert payload["recipient"] == "US.13491208655302741918"
    assert "to" not in payload
    both = build_payload(message, Contact(wa_id="16505551234", user_id="US.1"))
    assert both["to"] == "16505551234"
    assert "recipient" not in both


def _reaction(payload: dict[str, Any] | None) -> Message:
    return Message(
        id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        direction=MessageDirection.OUTBOUND,
        type="reaction",
        text=None,
        payload=payload,
        status=MessageStatus.SENDING,
    )


def test_a_reaction_sends_only_the_message_and_the_emoji() -> None:
    """Given a queued reaction whose stored payload also names our message id
    When its Cloud API body is built
    Then it is Meta's reaction object, without our own keys; "" (a removal) is kept."""
    stored = {"message_id": "wamid.ABC", "emoji": "👍", "target": str(uuid.uuid4())}
    payload = build_payload(_reaction(stored), Contact(wa_id="16505551234"))
    assert payload["type"] == "reaction"
    assert payload["reaction"] == {"message_id": "wamid.ABC", "emoji": "👍"}
    removal = build_payload(_reaction(stored | {"emoji": ""}), Contact(wa_id="16505551234"))
    assert removal["reaction"] == {"message_id": "wamid.ABC", "emoji": ""}


def test_a_reaction_without_its_message_is_refused() -> None:
    """Given a reaction row whose payload lost its target
    When its body is built
    Then ValueError (the worker records it FAILED, never sends it)."""
    for broken in (None, {"emoji": "👍"}, {"message_id": "wamid.ABC"}):
        with pytest.raises(ValueError):
            build_payload(_reaction(broken), Contact(wa_id="16505551234"))
