"""The Cloud API bodies of outbound messages."""

from __future__ import annotations

import uuid

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
