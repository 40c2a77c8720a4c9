"""A pure parser of verified WhatsApp Cloud API webhook bodies into typed, immutable records."""

# No I/O and no database: `parse_webhook` takes the already-parsed JSON body and returns a
# `ParsedWebhook`. It never raises on odd input; whatever it cannot type (an unknown field,
# a message without an id, a list where a dict belongs, ...) lands in `ParsedWebhook.unknown`
# with its original JSON, so nothing is dropped silently. `raw` attributes reference the
# original dicts (no copies): treat them as read-only.

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OBJECT = "whatsapp_business_account"
EPOCH = datetime.fromtimestamp(0, UTC)

# Meta's inbound message types; anything else (including Meta's own "unknown") reads
# "unsupported", with the original kept in `raw`. Each is a value of the model enum
# `MessageType` (tests/whatsapp/test_message_types.py holds them equal).
MESSAGE_TYPES = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "order",
        "system",
        "request_welcome",
        "unsupported",
    }
)
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})

# Why something went to `unknown` (UnknownChange.reason).
NOT_AN_OBJECT = "body is not a JSON object"
WRONG_OBJECT = "object is not whatsapp_business_account"
BAD_ENTRIES = "entry is not a list"
BAD_ENTRY = "entry item is not an object"
BAD_CHANGES = "entry.changes is not a list"
BAD_CHANGE = "change is not an object"
BAD_VALUE = "change.value is not an object"
UNHANDLED_FIELD = "field not handled"
NO_WABA_ID = "entry.id (the WABA id) is missing"
NO_PHONE_NUMBER_ID = "metadata.phone_number_id is missing"
NOTHING_KNOWN = "messages change without messages, statuses or errors"
BAD_LIST = "not a list"
BAD_ITEM = "item is not an object"
MESSAGE_WITHOUT_ID = "message without id"
STATUS_WITHOUT_ID = "status without id"
STATUS_WITHOUT_STATUS = "status without status"
TEMPLATE_WITHOUT_EVENT = "template status update without event"
PARSER_ERROR = "parser error"


@dataclass(frozen=True, slots=True)
class MetaErrorInfo:
    """One entry of a Meta `errors` array."""

    code: int | None
    title: str | None
    message: str | None
    details: str | None


@dataclass(frozen=True, slots=True)
class ContactProfile:
    """A WhatsApp user as `value.contacts` describes them (phone and/or business-scoped id)."""

    wa_id: str | None
    user_id: str | None
    parent_user_id: str | None
    username: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Media:
    """The media object of an image, video, audio, document or sticker message."""

    id: str | None
    mime_type: str | None
    sha256: str | None
    caption: str | None
    filename: str | None
    voice: bool
    animated: bool
    url: str | None


@dataclass(frozen=True, slots=True)
class Location:
    """A shared location: a pin (coordinates only) or a chosen place (name, address)."""

    latitude: float
    longitude: float
    name: str | None
    address: str | None


@dataclass(frozen=True, slots=True)
class CardPhone:
    """One phone number of a shared contact card."""

    phone: str
    wa_id: str | None
    type: str | None


@dataclass(frozen=True, slots=True)
class CardEmail:
    """One email address of a shared contact card."""

    email: str
    type: str | None


@dataclass(frozen=True, slots=True)
class ContactCard:
    """One shared contact card (a `contacts` message carries one or more)."""

    name: str | None
    first_name: str | None
    last_name: str | None
    organization: str | None
    phones: tuple[CardPhone, ...]
    emails: tuple[CardEmail, ...]


class ReplyKind(enum.StrEnum):
    """What the contact chose (InteractiveReply.kind)."""

    BUTTON_REPLY = "button_reply"
    LIST_REPLY = "list_reply"
    QUICK_REPLY = "quick_reply"  # a template's quick-reply button (a `button` message)


@dataclass(frozen=True, slots=True)
class InteractiveReply:
    """The contact's choice: a reply button, a list row, or a template's quick-reply button."""

    kind: ReplyKind
    id: str | None
    title: str
    description: str | None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a WhatsApp user sent to one of our business numbers."""

    phone_number_id: str
    display_phone_number: str | None
    wa_message_id: str
    from_wa_id: str | None
    from_user_id: str | None
    from_username: str | None
    contact: ContactProfile | None
    timestamp: datetime
    type: str
    text: str | None
    media: Media | None
    reply_to_wa_message_id: str | None
    forwarded: bool
    frequently_forwarded: bool
    referral: dict[str, Any] | None
    reaction_to_wa_message_id: str | None
    reaction_emoji: str | None
    errors: tuple[MetaErrorInfo, ...]
    raw: dict[str, Any]
    waba_id: str | None = None
    location: Location | None = None
    contact_cards: tuple[ContactCard, ...] = ()
    interactive_reply: InteractiveReply | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery status of a message we sent (sent, delivered, read, played, failed, ...)."""

    phone_number_id: str
    wa_message_id: str
    status: str
    timestamp: datetime
    recipient_id: str | None
    recipient_user_id: str | None
    biz_opaque_callback_data: str | None
    errors: tuple[MetaErrorInfo, ...]
    conversation_id: str | None
    pricing_category: str | None
    raw: dict[str, Any]
    waba_id: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateStatusUpdate:
    """A `message_template_status_update` change (approved, rejected, paused, ...)."""

    waba_id: str
    event: str
    template_id: str | None
    template_name: str | None
    language: str | None
    reason: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QualityUpdate:
    """A `phone_number_quality_update` change (messaging limit tier changes)."""

    waba_id: str
    display_phone_number: str | None
    event: str | None
    current_limit: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """An `account_update` change (restrictions, violations, bans, partner events, ...)."""

    waba_id: str
    event: str | None
    phone_number: str | None
    restriction_types: tuple[str, ...]
    violation_type: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookError:
    """The `value.errors` at the top of a messages change (Meta could not deliver something)."""

    phone_number_id: str | None
    waba_id: str
    errors: tuple[MetaErrorInfo, ...]
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownChange:
    """Anything the parser could not type, kept with its original JSON."""

    waba_id: str | None
    field: str | None
    raw: dict[str, Any]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    """Everything one webhook body carries, grouped by kind, in the order received."""

    messages: tuple[InboundMessage, ...]
    statuses: tuple[StatusUpdate, ...]
    contacts: tuple[ContactProfile, ...]
    template_updates: tuple[TemplateStatusUpdate, ...]
    quality_updates: tuple[QualityUpdate, ...]
    account_updates: tuple[AccountUpdate, ...]
    errors: tuple[WebhookError, ...]
    unknown: tuple[UnknownChange, ...]

    @property
    def phone_number_ids(self) -> frozenset[str]:
        """The business phone number ids that messages, statuses and errors refer to."""
        ids = {m.phone_number_id for m in self.messages}
        ids.update(s.phone_number_id for s in self.statuses)
        ids.update(e.phone_number_id for e in self.errors if e.phone_number_id is not None)
        return frozenset(ids)

    @property
    def waba_ids(self) -> frozenset[str]:
        """The WhatsApp Business Account ids (entry ids) of everything in the body."""
        ids: set[str] = set()
        for group in (self.messages, self.statuses, self.unknown):
            ids.update(item.waba_id for item in group if item.waba_id is not None)
        for typed in (self.template_updates, self.quality_updates, self.account_updates):
            ids.update(item.waba_id for item in typed)
        ids.update(e.waba_id for e in self.errors)
        return frozenset(ids)


# --- coercion helpers: never raise, strings only where strings are expected ---


def _str(value: object) -> str | None:
    """Return value as a string when it is a string or a finite number, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float) and math.isfinite(value):
            return str(int(value)) if value.is_integer() else repr(value)
    except ValueError:  # an int beyond the str-conversion digit limit
        return None
    return None


# The longest identifier kept (wamids, media, user and reply ids, usernames, a media's
# sha256: the columns that store them hold 128 characters), and the longest WhatsApp id
# (a phone number's digits: 32). A longer one is no identifier Meta gives: it is treated
# as missing (a message without an id is kept as not understood) instead of failing the
# whole event on PostgreSQL, which refuses a value longer than its column, at every retry
# (SQLite stored it whole).
MAX_ID = 128
MAX_WA_ID = 32


def _id(value: object) -> str | None:
    """Return value as a non-empty identifier string of at most `MAX_ID` characters,
    else None."""
    text = _str(value)
    return text if text and len(text) <= MAX_ID else None


def _wa_id(value: object) -> str | None:
    """Return value as a WhatsApp id (at most `MAX_WA_ID` characters), else None."""
    text = _id(value)
    return text if text is not None and len(text) <= MAX_WA_ID else None


def _int(value: object) -> int | None:
    """Return value as an int when it is an int, an integral float or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _dict(value: object) -> dict[str, Any]:
    """Return value when it is a dict, else an empty dict (never mutated)."""
    return value if isinstance(value, dict) else _EMPTY


_EMPTY: dict[str, Any] = {}


def _timestamp(value: object, fallback: datetime) -> datetime:
    """Return an aware UTC datetime from Unix seconds (string or number), else fallback."""
    seconds: int | float
    if isinstance(value, str):
        try:
            seconds = int(value)
        except ValueError:
            try:
                seconds = float(value)
            except ValueError:
                return fallback
    elif isinstance(value, bool):
        return fallback
    elif isinstance(value, int | float):
        seconds = value
    else:
        return fallback
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return fallback


def _errors(value: object) -> tuple[MetaErrorInfo, ...]:
    """Return the MetaErrorInfo of a Meta `errors` array (a lone error object is tolerated)."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return ()
    out: list[MetaErrorInfo] = []
    for item in value:
        if isinstance(item, dict):
            data = item.get("error_data")
            out.append(
                MetaErrorInfo(
                    code=_int(item.get("code")),
                    title=_str(item.get("title")),
                    message=_str(item.get("message")),
                    details=_str(data.get("details")) if isinstance(data, dict) else None,
                )
            )
        elif (text := _str(item)) is not None:
            out.append(MetaErrorInfo(code=None, title=None, message=text, details=None))
    return tuple(out)


def _contact(value: dict[str, Any]) -> ContactProfile:
    """Return the ContactProfile of one `value.contacts` entry."""
    profile = _dict(value.get("profile"))
    return ContactProfile(
        wa_id=_wa_id(value.get("wa_id")),
        user_id=_id(value.get("user_id")),
        parent_user_id=_id(value.get("parent_user_id")),
        username=_id(profile.get("username")) or _id(value.get("username")),
        name=_str(profile.get("name")),
    )


# --- the human-readable text of each message type ---


def _text_of_text(payload: dict[str, Any]) -> str | None:
    """Return text.body."""
    return _str(payload.get("body")) or None


def _text_of_media(payload: dict[str, Any]) -> str | None:
    """Return a media caption."""
    return _str(payload.get("caption")) or None


def _text_of_interactive(payload: dict[str, Any]) -> str | None:
    """Return the title of a button or list reply (or a flow reply's body)."""
    for key in ("button_reply", "list_reply"):
        reply = payload.get(key)
        if isinstance(reply, dict):
            title = _str(reply.get("title"))
            if title:
                return title
    flow = payload.get("nfm_reply")
    if isinstance(flow, dict):
        return _str(flow.get("body")) or None
    return None


def _text_of_button(payload: dict[str, Any]) -> str | None:
    """Return the text (or, failing that, the payload) of a template quick-reply button."""
    return _str(payload.get("text")) or _str(payload.get("payload")) or None


def _text_of_reaction(payload: dict[str, Any]) -> str | None:
    """Return the reaction emoji (None for an unreaction)."""
    return _str(payload.get("emoji")) or None


def _text_of_location(payload: dict[str, Any]) -> str | None:
    """Return "name, address", or "Location: lat, lon" for a bare pin."""
    parts = [part for part in (_str(payload.get("name")), _str(payload.get("address"))) if part]
    if parts:
        return ", ".join(parts)
    latitude, longitude = _str(payload.get("latitude")), _str(payload.get("longitude"))
    if latitude is not None and longitude is not None:
        return f"Location: {latitude}, {longitude}"
    return None


def _card_name(card: object) -> str | None:
    """Return the display name of one shared contact card."""
    if not isinstance(card, dict):
        return None
    name = _dict(card.get("name"))
    formatted = _str(name.get("formatted_name"))
    if formatted:
        return formatted
    joined = " ".join(
        part for part in (_str(name.get("first_name")), _str(name.get("last_name"))) if part
    )
    if joined:
        return joined
    phones = card.get("phones")
    if isinstance(phones, list) and phones:
        return _str(_dict(phones[0]).get("phone")) or None
    return None


def _text_of_contacts(cards: object) -> str | None:
    """Return "Contact: A" or "Contacts: A, B, C" for shared contact cards."""
    if not isinstance(cards, list):
        return None
    cards = [card for card in cards if isinstance(card, dict)]
    if not cards:
        return None
    names = [name for name in map(_card_name, cards) if name]
    if not names:
        return "Contact" if len(cards) == 1 else f"{len(cards)} contacts"
    return ("Contact: " if len(cards) == 1 else "Contacts: ") + ", ".join(names)


# --- structured content: what an inbox shows beside (or instead of) the text ---


def _float(value: object) -> float | None:
    """Return value as a finite float (a number or a numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def location_of(payload: object) -> Location | None:
    """The Location of a `location` object; None without valid coordinates."""
    payload = _dict(payload)
    latitude, longitude = _float(payload.get("latitude")), _float(payload.get("longitude"))
    if latitude is None or longitude is None:
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    return Location(
        latitude=latitude,
        longitude=longitude,
        name=_str(payload.get("name")) or None,
        address=_str(payload.get("address")) or None,
    )


def _items(value: object) -> list[dict[str, Any]]:
    """The dict items of a list (anything else skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _card(card: dict[str, Any]) -> ContactCard:
    name = _dict(card.get("name"))
    phones = tuple(
        CardPhone(phone=phone, wa_id=_id(item.get("wa_id")), type=_str(item.get("type")) or None)
        for item in _items(card.get("phones"))
        if (phone := _str(item.get("phone")))
    )
    emails = tuple(
        CardEmail(email=email, type=_str(item.get("type")) or None)
        for item in _items(card.get("emails"))
        if (email := _str(item.get("email")))
    )
    return ContactCard(
        name=_card_name(card),
        first_name=_str(name.get("first_name")) or None,
        last_name=_str(name.get("last_name")) or None,
        organization=_str(_dict(card.get("org")).get("company")) or None,
        phones=phones,
        emails=emails,
    )


def contact_cards_of(cards: object) -> tuple[ContactCard, ...]:
    """The cards of a `contacts` array (non-objects skipped)."""
    return tuple(_card(card) for card in _items(cards))


def interactive_reply_of(kind: str, payload: object) -> InteractiveReply | None:
    """The choice of an `interactive` (button or list reply) or `button` message."""
    payload = _dict(payload)
    if kind == "button":
        title = _str(payload.get("text")) or _str(payload.get("payload"))
        if not title:
            return None
        payload_id = _str(payload.get("payload")) or None
        return InteractiveReply(ReplyKind.QUICK_REPLY, payload_id, title, None)
    if kind != "interactive":
        return None
    for reply_kind in (ReplyKind.BUTTON_REPLY, ReplyKind.LIST_REPLY):
        reply = payload.get(reply_kind.value)
        if isinstance(reply, dict) and (title := _str(reply.get("title"))):
            description = _str(reply.get("description")) or None
            return InteractiveReply(reply_kind, _id(reply.get("id")), title, description)
    return None


def _text_of_order(payload: dict[str, Any]) -> str | None:
    """Return "Order: N items" with the customer's note, if any."""
    items = payload.get("product_items")
    count = len(items) if isinstance(items, list) else 0
    summary = f"Order: {count} item{'' if count == 1 else 's'}"
    note = _str(payload.get("text"))
    return f"{summary} ({note})" if note else summary


def _text_of_system(payload: dict[str, Any]) -> str | None:
    """Return system.body, or a summary of the system event's type."""
    body = _str(payload.get("body"))
    if body:
        return body
    kind = _str(payload.get("type"))
    return f"System: {kind}" if kind else "System message"


_TEXT_OF: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "text": _text_of_text,
    "image": _text_of_media,
    "video": _text_of_media,
    "audio": _text_of_media,
    "document": _text_of_media,
    "sticker": _text_of_media,
    "interactive": _text_of_interactive,
    "button": _text_of_button,
    "reaction": _text_of_reaction,
    "location": _text_of_location,
    "order": _text_of_order,
    "system": _text_of_system,
}


# --- the walk over the body ---


class _Collector:
    """The lists a parse fills, frozen into a ParsedWebhook at the end."""

    __slots__ = (
        "account_updates",
        "contacts",
        "errors",
        "messages",
        "quality_updates",
        "statuses",
        "template_updates",
        "unknown",
    )

    def __init__(self) -> None:
        """Start with empty lists."""
        self.messages: list[InboundMessage] = []
        self.statuses: list[StatusUpdate] = []
        self.contacts: list[ContactProfile] = []
        self.template_updates: list[TemplateStatusUpdate] = []
        self.quality_updates: list[QualityUpdate] = []
        self.account_updates: list[AccountUpdate] = []
        self.errors: list[WebhookError] = []
        self.unknown: list[UnknownChange] = []

    def skip(self, waba_id: str | None, field: str | None, raw: object, reason: str) -> None:
        """Record something the parser could not type (non-dicts are wrapped)."""
        kept = raw if isinstance(raw, dict) else {"value": raw}
        self.unknown.append(UnknownChange(waba_id=waba_id, field=field, raw=kept, reason=reason))

    def freeze(self) -> ParsedWebhook:
        """Return the immutable result."""
        return ParsedWebhook(
            messages=tuple(self.messages),
            statuses=tuple(self.statuses),
            contacts=tuple(self.contacts),
            template_updates=tuple(self.template_updates),
            quality_updates=tuple(self.quality_updates),
            account_updates=tuple(self.account_updates),
            errors=tuple(self.errors),
            unknown=tuple(self.unknown),
        )


def parse_webhook(body: object) -> ParsedWebhook:
    """Parse a verified webhook body (parsed JSON) into typed records; never raises."""
    out = _Collector()
    if not isinstance(body, dict):
        out.skip(None, None, {"body": body}, NOT_AN_OBJECT)
        return out.freeze()
    if body.get("object") != OBJECT:
        out.skip(None, None, body, WRONG_OBJECT)
        return out.freeze()
    entries = body.get("entry")
    if not isinstance(entries, list):
        out.skip(None, None, body, BAD_ENTRIES)
        return out.freeze()
    for entry in entries:
        if not isinstance(entry, dict):
            out.skip(None, None, {"entry": entry}, BAD_ENTRY)
            continue
        waba_id = _id(entry.get("id"))
        changes = entry.get("changes")
        if not isinstance(changes, list):
            out.skip(waba_id, None, entry, BAD_CHANGES)
            continue
        entry_time = _timestamp(entry.get("time"), EPOCH)
        for change in changes:
            if not isinstance(change, dict):
                out.skip(waba_id, None, {"change": change}, BAD_CHANGE)
                continue
            field = _str(change.get("field"))
            try:
                _change(out, waba_id, field, change, entry_time)
            except Exception as exc:  # a last resort: odd input must never escape as an error
                out.skip(waba_id, field, change, f"{PARSER_ERROR}: {type(exc).__name__}")
    return out.freeze()


def _change(
    out: _Collector, waba_id: str | None, field: str | None, change: dict[str, Any], time: datetime
) -> None:
    """Route one change by its field."""
    value = change.get("value")
    if not isinstance(value, dict):
        out.skip(waba_id, field, change, BAD_VALUE)
    elif field == "messages":
        _messages_change(out, waba_id, value, time)
    elif field not in _WABA_FIELDS:
        out.skip(waba_id, field, change, UNHANDLED_FIELD)
    elif waba_id is None:
        out.skip(waba_id, field, change, NO_WABA_ID)
    else:
        _WABA_FIELDS[field](out, waba_id, value)


def _messages_change(
    out: _Collector, waba_id: str | None, value: dict[str, Any], time: datetime
) -> None:
    """Parse the contacts, messages, statuses and errors of one `messages` change."""
    field = "messages"
    metadata = _dict(value.get("metadata"))
    phone_number_id = _id(metadata.get("phone_number_id"))
    display_phone_number = _str(metadata.get("display_phone_number"))

    by_wa_id: dict[str, ContactProfile] = {}
    by_user_id: dict[str, ContactProfile] = {}
    contacts = value.get("contacts")
    if isinstance(contacts, list):
        for item in contacts:
            if not isinstance(item, dict):
                out.skip(waba_id, field, {"contact": item}, BAD_ITEM)
                continue
            profile = _contact(item)
            out.contacts.append(profile)
            if profile.wa_id is not None:
                by_wa_id.setdefault(profile.wa_id, profile)
            if profile.user_id is not None:
                by_user_id.setdefault(profile.user_id, profile)
    elif contacts is not None:
        out.skip(waba_id, field, value, f"contacts {BAD_LIST}")

    if "errors" in value:
        errors = _errors(value["errors"])
        if waba_id is None:
            out.skip(waba_id, field, value, NO_WABA_ID)
        else:
            out.errors.append(WebhookError(phone_number_id, waba_id, errors, value))

    messages = value.get("messages")
    statuses = value.get("statuses")
    if messages is None and statuses is None:
        if "errors" not in value:
            out.skip(waba_id, field, value, NOTHING_KNOWN)
        return
    if phone_number_id is None:
        out.skip(waba_id, field, value, NO_PHONE_NUMBER_ID)
        return

    if isinstance(messages, list):
        for item in messages:
            if not isinstance(item, dict):
                out.skip(waba_id, field, {"message": item}, BAD_ITEM)
                continue
            wa_message_id = _id(item.get("id"))
            if wa_message_id is None:
                out.skip(waba_id, field, item, MESSAGE_WITHOUT_ID)
                continue
            out.messages.append(
                _message(
                    item,
                    wa_message_id,
                    phone_number_id,
                    display_phone_number,
                    waba_id,
                    by_wa_id,
                    by_user_id,
                    time,
                )
            )
    elif messages is not None:
        out.skip(waba_id, field, value, f"messages {BAD_LIST}")

    if isinstance(statuses, list):
        for item in statuses:
            if not isinstance(item, dict):
                out.skip(waba_id, field, {"status": item}, BAD_ITEM)
                continue
            _status(out, item, phone_number_id, waba_id, by_wa_id, time)
    elif statuses is not None:
        out.skip(waba_id, field, value, f"statuses {BAD_LIST}")


def _message(
    raw: dict[str, Any],
    wa_message_id: str,
    phone_number_id: str,
    display_phone_number: str | None,
    waba_id: str | None,
    by_wa_id: dict[str, ContactProfile],
    by_user_id: dict[str, ContactProfile],
    time: datetime,
) -> InboundMessage:
    """Parse one inbound message that has an id."""
    from_wa_id = _wa_id(raw.get("from"))
    from_user_id = _id(raw.get("from_user_id"))
    contact = None
    if from_user_id is not None:
        contact = by_user_id.get(from_user_id)
    if contact is None and from_wa_id is not None:
        contact = by_wa_id.get(from_wa_id)
    from_username = _id(raw.get("from_username"))
    if contact is not None:
        from_wa_id = from_wa_id or contact.wa_id
        from_user_id = from_user_id or contact.user_id
        from_username = from_username or contact.username

    given = raw.get("type")
    kind = given if isinstance(given, str) and given in MESSAGE_TYPES else "unsupported"
    payload = raw.get(kind)

    text: str | None = None
    media: Media | None = None
    reaction_to: str | None = None
    reaction_emoji: str | None = None
    if kind == "contacts":
        text = _text_of_contacts(payload)
    elif isinstance(payload, dict):
        text_of = _TEXT_OF.get(kind)
        if text_of is not None:
            text = text_of(payload)
        if kind in MEDIA_TYPES:
            media = Media(
                id=_id(payload.get("id")),
                mime_type=_str(payload.get("mime_type")),
                sha256=_id(payload.get("sha256")),
                caption=_str(payload.get("caption")),
                filename=_str(payload.get("filename")),
                voice=payload.get("voice") is True,
                animated=payload.get("animated") is True,
                url=_str(payload.get("url")),
            )
        elif kind == "reaction":
            reaction_to = _id(payload.get("message_id"))
            reaction_emoji = text

    location = location_of(payload) if kind == "location" else None
    cards = contact_cards_of(payload) if kind == "contacts" else ()
    choice = interactive_reply_of(kind, payload)

    reply_to: str | None = None
    forwarded = frequently_forwarded = False
    context = raw.get("context")
    if isinstance(context, dict):
        reply_to = _id(context.get("id"))
        frequently_forwarded = context.get("frequently_forwarded") is True
        forwarded = frequently_forwarded or context.get("forwarded") is True

    referral = raw.get("referral")
    return InboundMessage(
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        wa_message_id=wa_message_id,
        from_wa_id=from_wa_id,
        from_user_id=from_user_id,
        from_username=from_username,
        contact=contact,
        timestamp=_timestamp(raw.get("timestamp"), time),
        type=kind,
        text=text,
        media=media,
        reply_to_wa_message_id=reply_to,
        forwarded=forwarded,
        frequently_forwarded=frequently_forwarded,
        referral=referral if isinstance(referral, dict) else None,
        reaction_to_wa_message_id=reaction_to,
        reaction_emoji=reaction_emoji,
        errors=_errors(raw.get("errors")) if "errors" in raw else (),
        raw=raw,
        waba_id=waba_id,
        location=location,
        contact_cards=cards,
        interactive_reply=choice,
    )


def _status(
    out: _Collector,
    raw: dict[str, Any],
    phone_number_id: str,
    waba_id: str | None,
    by_wa_id: dict[str, ContactProfile],
    time: datetime,
) -> None:
    """Parse one status update; one without an id or a status goes to unknown."""
    wa_message_id = _id(raw.get("id"))
    if wa_message_id is None:
        out.skip(waba_id, "messages", raw, STATUS_WITHOUT_ID)
        return
    status = _id(raw.get("status"))
    if status is None:
        out.skip(waba_id, "messages", raw, STATUS_WITHOUT_STATUS)
        return
    recipient_id = _id(raw.get("recipient_id"))
    recipient_user_id = _id(raw.get("recipient_user_id"))
    if recipient_user_id is None and recipient_id is not None:
        contact = by_wa_id.get(recipient_id)
        recipient_user_id = contact.user_id if contact is not None else None
    out.statuses.append(
        StatusUpdate(
            phone_number_id=phone_number_id,
            wa_message_id=wa_message_id,
            status=status.lower(),
            timestamp=_timestamp(raw.get("timestamp"), time),
            recipient_id=recipient_id,
            recipient_user_id=recipient_user_id,
            biz_opaque_callback_data=_str(raw.get("biz_opaque_callback_data")),
            errors=_errors(raw.get("errors")) if "errors" in raw else (),
            conversation_id=_id(_dict(raw.get("conversation")).get("id")),
            pricing_category=_str(_dict(raw.get("pricing")).get("category")),
            raw=raw,
            waba_id=waba_id,
        )
    )


def _template_change(out: _Collector, waba_id: str, value: dict[str, Any]) -> None:
    """Parse a message_template_status_update change."""
    event = _id(value.get("event"))
    if event is None:
        out.skip(waba_id, "message_template_status_update", value, TEMPLATE_WITHOUT_EVENT)
        return
    out.template_updates.append(
        TemplateStatusUpdate(
            waba_id=waba_id,
            event=event,
            template_id=_id(value.get("message_template_id")),
            template_name=_str(value.get("message_template_name")),
            language=_str(value.get("message_template_language")),
            reason=_str(value.get("reason")),
            raw=value,
        )
    )


def _quality_change(out: _Collector, waba_id: str, value: dict[str, Any]) -> None:
    """Parse a phone_number_quality_update change (it has no metadata: route by WABA)."""
    out.quality_updates.append(
        QualityUpdate(
            waba_id=waba_id,
            display_phone_number=_str(value.get("display_phone_number")),
            event=_str(value.get("event")),
            current_limit=_str(value.get("current_limit")),
            raw=value,
        )
    )


def _account_change(out: _Collector, waba_id: str, value: dict[str, Any]) -> None:
    """Parse an account_update change."""
    restrictions = value.get("restriction_info")
    types: tuple[str, ...] = ()
    if isinstance(restrictions, list):
        found = (_str(_dict(item).get("restriction_type")) for item in restrictions)
        types = tuple(kind for kind in found if kind)
    out.account_updates.append(
        AccountUpdate(
            waba_id=waba_id,
            event=_str(value.get("event")),
            phone_number=_str(value.get("phone_number")),
            restriction_types=types,
            violation_type=_str(_dict(value.get("violation_info")).get("violation_type")),
            raw=value,
        )
    )


_WABA_FIELDS: dict[str, Callable[[_Collector, str, dict[str, Any]], None]] = {
    "message_template_status_update": _template_change,
    "phone_number_quality_update": _quality_change,
    "account_update": _account_change,
}
