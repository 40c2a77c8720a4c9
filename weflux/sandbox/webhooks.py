"""Meta-shaped WhatsApp webhook bodies and their signature, for the sandbox and `weflux simulate`.

The shapes are those of Meta's reference examples the parser is tested with
(tests/fixtures/whatsapp/): one entry per business account, `changes[].value` with
`metadata`, `contacts`, `messages` or `statuses`; timestamps are the current time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

JsonDict = dict[str, Any]

OBJECT = "whatsapp_business_account"
ERRORS_HREF = "/documentation/business-messaging/whatsapp/support/error-codes"


def new_wamid() -> str:
    """A fresh WhatsApp message id shaped like Meta's `wamid.HBgL…`."""
    raw = b"\x15\x02\x00\x11\x18\x12" + secrets.token_hex(9).upper().encode()
    return "wamid.HBgL" + base64.b64encode(raw).decode().rstrip("=")


def now() -> str:
    """The current Unix time in seconds, as Meta writes it (a string)."""
    return str(int(time.time()))


def body(business_account_id: str, *changes: JsonDict) -> JsonDict:
    """A notification of one business account carrying `changes`."""
    return {"object": OBJECT, "entry": [{"id": business_account_id, "changes": list(changes)}]}


def messages_change(
    phone_number_id: str,
    display_phone_number: str,
    *,
    messages: list[JsonDict] | None = None,
    statuses: list[JsonDict] | None = None,
    contacts: list[JsonDict] | None = None,
) -> JsonDict:
    """A `messages` change of one business number, with only the arrays given."""
    value: JsonDict = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": "".join(c for c in display_phone_number if c.isdigit()),
            "phone_number_id": phone_number_id,
        },
    }
    for key, items in (("contacts", contacts), ("messages", messages), ("statuses", statuses)):
        if items:
            value[key] = items
    return {"value": value, "field": "messages"}


def contact(wa_id: str, name: str) -> JsonDict:
    """One `value.contacts` entry: the customer's profile name and WhatsApp id."""
    return {"profile": {"name": name}, "wa_id": wa_id}


def inbound(
    wa_message_id: str,
    from_wa_id: str,
    kind: str,
    payload: JsonDict,
    *,
    reply_to: str | None = None,
) -> JsonDict:
    """An inbound message of `kind` (text, image, location, reaction…), sent now."""
    built: JsonDict = {
        "from": from_wa_id,
        "id": wa_message_id,
        "timestamp": now(),
        "type": kind,
        kind: payload,
    }
    if reply_to is not None:
        built["context"] = {"from": from_wa_id, "id": reply_to}
    return built


def error(code: int, title: str, details: str | None = None) -> JsonDict:
    """One entry of a Meta `errors` array."""
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details or title},
        "href": ERRORS_HREF,
    }


def status(
    wa_message_id: str,
    state: str,
    recipient_id: str,
    *,
    errors: list[JsonDict] | None = None,
) -> JsonDict:
    """A status of an outbound message (`sent`, `delivered`, `read` or `failed`), now."""
    built: JsonDict = {
        "id": wa_message_id,
        "status": state,
        "timestamp": now(),
        "recipient_id": recipient_id,
    }
    if state in ("sent", "delivered"):
        built["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "service"}
    if errors:
        built["errors"] = errors
    return built


def quality_change(display_phone_number: str, rating: str) -> JsonDict:
    """A `phone_number_quality_update` change (GREEN, YELLOW or RED)."""
    events = {"GREEN": "UPGRADE", "YELLOW": "FLAGGED", "RED": "DOWNGRADE"}
    return {
        "value": {
            "display_phone_number": "".join(c for c in display_phone_number if c.isdigit()),
            "event": events.get(rating, "ONBOARDING"),
            "current_limit": "TIER_250",
            "old_limit": "TIER_250",
            "current_quality_rating": rating,
        },
        "field": "phone_number_quality_update",
    }


def account_change(phone_number_id: str, event: str) -> JsonDict:
    """An `account_update` change (ACCOUNT_RESTRICTION, ACCOUNT_VIOLATION, DISABLED_UPDATE…)."""
    value: JsonDict = {"phone_number": phone_number_id, "event": event}
    if event == "ACCOUNT_RESTRICTION":
        value["restriction_info"] = [
            {
                "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                "expiration": int(time.time()) + 86400,
            }
        ]
    elif event == "ACCOUNT_VIOLATION":
        value["violation_info"] = {"violation_type": "SCAM"}
    return {"value": value, "field": "account_update"}


def encode(notification: JsonDict) -> bytes:
    """Serialise like Meta: compact, non-ASCII escaped."""
    return json.dumps(notification, separators=(",", ":"), ensure_ascii=True).encode()


def sign(raw: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` header value for exactly these bytes."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
