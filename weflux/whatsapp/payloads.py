"""The Cloud API bodies of our outbound messages, built from the outbox rows."""

from __future__ import annotations

from typing import Any

from weflux.models import Contact, Message


class NoRecipient(ValueError):
    """The contact has neither a phone number id nor a business-scoped user id."""


MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
_CAPTIONED = ("image", "video", "document")


def build_payload(
    message: Message, contact: Contact, *, media_id: str | None = None, filename: str | None = None
) -> dict[str, Any]:
    """The Cloud API body for `message` (the client adds `messaging_product`).

    A media message refers to the id its file was uploaded under (`media_id`).

    Addressed by `to` (the contact's wa_id) when known; else by `recipient` (the
    business-scoped user id, for username-only contacts). Meta gives `to` precedence
    when both are sent, so only one is.
    """
    payload: dict[str, Any] = {}
    if contact.wa_id:
        payload["to"] = contact.wa_id
    elif contact.user_id:
        payload["recipient"] = contact.user_id
    else:
        raise NoRecipient("the contact has neither a WhatsApp number nor a user id")
    if message.type == "text":
        if not message.text:
            raise ValueError("a text message without text")
        payload["type"] = "text"
        payload["text"] = {"body": message.text}
    elif message.type == "template":
        if not isinstance(message.payload, dict):
            raise ValueError("a template message without its template")
        payload["type"] = "template"
        payload["template"] = message.payload
    elif message.type == "reaction":
        reaction = message.payload if isinstance(message.payload, dict) else {}
        if not reaction.get("message_id") or not isinstance(reaction.get("emoji"), str):
            raise ValueError("a reaction without its message or emoji")
        payload["type"] = "reaction"
        payload["reaction"] = {"message_id": reaction["message_id"], "emoji": reaction["emoji"]}
    elif message.type in MEDIA_TYPES:
        if not media_id:
            raise ValueError("a media message without its uploaded file")
        media: dict[str, Any] = {"id": media_id}
        if message.text and message.type in _CAPTIONED:
            media["caption"] = message.text
        if filename and message.type == "document":
            media["filename"] = filename
        payload["type"] = message.type
        payload[message.type] = media
    else:
        raise ValueError(f"outbound messages of type {message.type!r} are not supported")
    if message.reply_to_wa_message_id:
        payload["context"] = {"message_id": message.reply_to_wa_message_id}
    payload["biz_opaque_callback_data"] = str(message.id)
    return payload
