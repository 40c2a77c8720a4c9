"""Outbound messages: an agent's reply or template is queued, in the request's transaction.

The `messages` row *is* the outbox. `send_message` and `send_template_message` insert it
as QUEUED (with `next_attempt_at = now`) in the caller's session and nothing else, so a
request that rolls back leaves no message behind and one that commits is sure to be
picked up by the delivery worker (`weflux.worker.delivery`), which calls Meta.

A `client_message_id` makes a send idempotent within the workspace: the client picks it
(say, a UUID) once per message and re-sends the same id after a timeout; the second call
answers the message of the first instead of queueing it twice. The same id with another
conversation, kind or content is CONFLICT (a client bug, never a silent answer).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.config import Settings
from weflux.errors import (
    BadUserInput,
    Conflict,
    ContactOptedOut,
    Forbidden,
    NotFound,
    OutsideServiceWindow,
)
from weflux.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Message,
    MessageDirection,
    MessageStatus,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services import contacts, quotas, templates
from weflux.services import media as media_service
from weflux.throttle.ratelimit import RateLimiter

log = logging.getLogger(__name__)

SERVICE_WINDOW = timedelta(hours=24)
MAX_TEXT_LENGTH = 4096  # Meta's limit for a text message body
MAX_CLIENT_MESSAGE_ID_LENGTH = 128
MAX_TEMPLATE_NAME_LENGTH = 512
MAX_TEMPLATE_PARAMETERS = 100
MAX_TEMPLATE_PARAMETER_LENGTH = 1024

# Meta: template names are lowercase letters, digits and underscores.
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+$")
# Meta's language codes: `en`, `en_US`, `pt_BR`, `zh_HK`, `fil`...
_LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z0-9]{2,4})?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Meta refuses template parameters holding new lines, tabs or more than 4 spaces in a row.
_PARAMETER_FORBIDDEN = re.compile(r"[\n\r\t]| {5,}")


def field_error(field: str, message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": field, "message": message}])


def opt_change(text: str | None, settings: Settings) -> bool | None:
    """What an inbound text says about consent.

    True: the contact opted out (`STOP`, `UNSUBSCRIBE`...); False: opted in again
    (`START`, `SUBSCRIBE`...); None: neither. The whole message, trimmed, must equal a
    keyword of `WEFLUX_OPT_OUT_KEYWORDS` / `WEFLUX_OPT_IN_KEYWORDS`, ignoring case, so
    "please stop by tomorrow" changes nothing. A keyword in both lists opts out.
    """
    if text is None:
        return None
    word = text.strip().casefold()
    if not word:
        return None
    if word in {keyword.strip().casefold() for keyword in settings.opt_out_keywords}:
        return True
    if word in {keyword.strip().casefold() for keyword in settings.opt_in_keywords}:
        return False
    return None


def service_window_expires_at(conversation: Conversation) -> datetime | None:
    """When free-form replies stop being allowed: 24 hours after the contact last wrote."""
    if conversation.last_inbound_at is None:
        return None
    return conversation.last_inbound_at + SERVICE_WINDOW


def service_window_open(conversation: Conversation, now: datetime | None = None) -> bool:
    """Whether the contact wrote within the last 24 hours (free-form replies allowed)."""
    expires_at = service_window_expires_at(conversation)
    return expires_at is not None and (now or utcnow()) < expires_at


def _check_client_message_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_CLIENT_MESSAGE_ID_LENGTH:
        raise field_error(
            "clientMessageId",
            f"`clientMessageId` must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH} characters",
        )
    if not value.isprintable() or value != value.strip():
        raise field_error(
            "clientMessageId",
            "`clientMessageId` must be printable, without surrounding spaces",
        )
    return value


def _check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise field_error("text", "`text` must not be empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise field_error("text", f"`text` must be at most {MAX_TEXT_LENGTH} characters")
    if _CONTROL.search(text):
        raise field_error("text", "`text` must not contain control characters")
    return text


def _check_template(
    template_name: str, language_code: str, body_parameters: list[str]
) -> tuple[str, str, list[str]]:
    name = template_name.strip() if isinstance(template_name, str) else ""
    if not name or len(name) > MAX_TEMPLATE_NAME_LENGTH or not _TEMPLATE_NAME.match(name):
        raise field_error(
            "templateName",
            "`templateName` must be the template's name: lowercase letters, digits and "
            f"underscores, at most {MAX_TEMPLATE_NAME_LENGTH} characters",
        )
    language = language_code.strip() if isinstance(language_code, str) else ""
    if not _LANGUAGE_CODE.match(language):
        raise field_error(
            "languageCode", "`languageCode` must be a template language code such as en_US"
        )
    if len(body_parameters) > MAX_TEMPLATE_PARAMETERS:
        raise field_error(
            "bodyParameters", f"at most {MAX_TEMPLATE_PARAMETERS} body parameters are allowed"
        )
    for index, parameter in enumerate(body_parameters):
        if not isinstance(parameter, str) or not parameter.strip():
            raise field_error("bodyParameters", f"body parameter {index + 1} must not be empty")
        if len(parameter) > MAX_TEMPLATE_PARAMETER_LENGTH:
            raise field_error(
                "bodyParameters",
                f"body parameter {index + 1} must be at most "
                f"{MAX_TEMPLATE_PARAMETER_LENGTH} characters",
            )
        if _PARAMETER_FORBIDDEN.search(parameter) or _CONTROL.search(parameter):
            raise field_error(
                "bodyParameters",
                f"body parameter {index + 1} must not contain new lines, tabs, control "
                "characters or more than four spaces in a row (Meta refuses them)",
            )
    return name, language, list(body_parameters)


def template_payload(name: str, language: str, body_parameters: list[str]) -> dict[str, Any]:
    """The `template` object of a Cloud API send, as stored in `Message.payload`."""
    payload: dict[str, Any] = {"name": name, "language": {"code": language}}
    payload["components"] = [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": value} for value in body_parameters],
        }
    ]
    return payload


def template_summary(name: str, language: str, body_parameters: list[str]) -> str:
    """A readable line standing for a template message in the inbox."""
    summary = f"Template {name} ({language})"
    if body_parameters:
        summary += ": " + ", ".join(body_parameters)
    return summary


async def _visible_conversation(
    session: AsyncSession, principal: Principal, conversation_id: uuid.UUID
) -> Conversation:
    if not principal.can(Permission.REPLY):
        raise Forbidden("Your role does not allow sending messages")
    # The session is scoped to the workspace and, for agents, to their visible
    # conversations: anything else reads as absent.
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound("Conversation not found")
    return conversation


async def _existing(session: AsyncSession, wanted: Message) -> Message | None:
    """The message an earlier send with `wanted`'s `client_message_id` queued, if any.

    A retry must ask for the same thing: the same conversation, kind (text, template),
    text and template. Anything else under a used id is CONFLICT, never the first message.
    """
    if wanted.client_message_id is None:
        return None
    found = (
        await session.exec(
            select(Message).where(Message.client_message_id == wanted.client_message_id)
        )
    ).first()
    if found is None:
        return None
    same = (
        found.direction == MessageDirection.OUTBOUND
        and found.conversation_id == wanted.conversation_id
        and found.type == wanted.type
        and found.text == wanted.text
        and found.payload == wanted.payload
    )
    if not same:
        message = "This clientMessageId was already used for another message"
        raise Conflict(message, details=[{"field": "clientMessageId", "message": message}])
    return found


async def check_recipient(session: AsyncSession, conversation: Conversation) -> WhatsAppAccount:
    contact = await session.get(Contact, conversation.contact_id)
    if contact is None:
        raise NotFound("Conversation not found")
    if contact.opted_out:
        raise ContactOptedOut(
            "This contact has opted out of messages (they sent STOP); nothing can be sent "
            "until they opt in again by sending START"
        )
    account = await session.get(WhatsAppAccount, conversation.account_id)
    if account is None or account.disconnected_at is not None:
        raise Conflict(
            "The WhatsApp number of this conversation is disconnected; reconnect it to reply"
        )
    return account


async def _queue(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    conversation: Conversation,
    message: Message,
) -> Message:
    """Insert the QUEUED row and bump the conversation, in the caller's transaction."""
    try:
        # Added inside the savepoint: `begin_nested` flushes what is pending before it
        # starts, and a duplicate there would fail the whole transaction, not the savepoint.
        async with session.begin_nested():
            session.add(message)
            await session.flush()
    except IntegrityError:
        # A concurrent call with the same clientMessageId committed first.
        again = await _existing(session, message)
        if again is not None:
            return again
        raise Conflict("The message could not be queued; try again") from None
    now = message.created_at
    if conversation.last_message_at is None or now >= conversation.last_message_at:
        conversation.last_message_id = message.id
        conversation.last_message_at = now
    conversation.updated_at = now
    session.add(conversation)
    await session.flush()
    log.info(
        "message queued",
        extra={
            "message_id": str(message.id),
            "conversation": str(conversation.id),
            "type": message.type,
        },
    )
    publish_after_commit(
        session,
        broker,
        principal.org_id,
        EventName.MESSAGE_ADDED,
        id=message.id,
        conversation_id=conversation.id,
    )
    publish_after_commit(
        session, broker, principal.org_id, EventName.CONVERSATION_UPDATED, id=conversation.id
    )
    return message


async def _queue_in_window(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    conversation: Conversation,
    message: Message,
) -> Message:
    """Queue a free-form reply (text, media): the earlier one of its clientMessageId, or
    a new one if the contact may receive it and wrote in the last 24 hours."""
    existing = await _existing(session, message)
    if existing is not None:
        return existing
    await check_recipient(session, conversation)
    if not service_window_open(conversation):
        raise OutsideServiceWindow(
            "The customer has not written in the last 24 hours, so WhatsApp only allows a "
            "template message now; send an approved template instead"
        )
    return await _queue(session, principal, broker, conversation, message)


def _new_outbound(
    principal: Principal,
    conversation: Conversation,
    *,
    type: str,
    text: str | None,
    payload: dict[str, Any] | None,
    client_message_id: str | None,
) -> Message:
    now = utcnow()
    return Message(
        org_id=principal.org_id,
        conversation_id=conversation.id,
        direction=MessageDirection.OUTBOUND,
        type=type,
        text=text,
        payload=payload,
        status=MessageStatus.QUEUED,
        client_message_id=client_message_id,
        sent_by_membership_id=principal.membership_id,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        status_updated_at=now,
    )


async def send_message(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    *,
    conversation_id: uuid.UUID,
    text: str,
    client_message_id: str | None,
) -> Message:
    """Queue a free-form text reply; the worker sends it.

    NOT_FOUND unless the conversation is visible to the caller; BAD_USER_INPUT for an
    empty or over-long text; CONTACT_OPTED_OUT when the contact sent STOP;
    OUTSIDE_SERVICE_WINDOW when the contact has not written in the last 24 hours (only a
    template may be sent then). A repeated `client_message_id` answers the message it
    queued before; CONFLICT if that one differs (conversation, kind or text).
    """
    client_message_id = _check_client_message_id(client_message_id)
    text = _check_text(text)
    conversation = await _visible_conversation(session, principal, conversation_id)
    message = _new_outbound(
        principal,
        conversation,
        type="text",
        text=text,
        payload=None,
        client_message_id=client_message_id,
    )
    return await _queue_in_window(session, principal, broker, conversation, message)


async def send_media(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    *,
    conversation_id: uuid.UUID,
    media_id: uuid.UUID,
    caption: str | None,
    client_message_id: str | None,
) -> Message:
    """Queue an uploaded file (uploadMedia) as a message; the worker uploads it to
    WhatsApp and sends it. The rules of send_message hold (visibility, opt-out, the
    24-hour window, `client_message_id`); NOT_FOUND for a file the caller may not see, or
    one no longer READY (a purge deleting it: `claim_for_sending` says why that is safe).
    """
    client_message_id = _check_client_message_id(client_message_id)
    if caption is not None:
        caption = _check_text(caption)
    conversation = await _visible_conversation(session, principal, conversation_id)
    media = await media_service.claim_for_sending(session, principal, media_id)
    message = _new_outbound(
        principal,
        conversation,
        type=media.kind,
        text=caption,
        payload={"mediaId": str(media.id)},
        client_message_id=client_message_id,
    )
    message.media_file_id = media.id
    return await _queue_in_window(session, principal, broker, conversation, message)


async def send_template_message(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    *,
    conversation_id: uuid.UUID,
    template_name: str,
    language_code: str,
    body_parameters: list[str],
    client_message_id: str | None = None,
    limiter: RateLimiter | None = None,
) -> Message:
    """Queue an approved template; allowed outside the 24-hour window, never to an opted-out
    contact. When the number's templates are known (`weflux.services.templates`), one that
    is not listed, not APPROVED or given the wrong number of body parameters is
    BAD_USER_INPUT before anything is queued; otherwise Meta judges it at send time (a
    wrong name or parameter count ends FAILED with Meta's code and title).
    `client_message_id` works as for `send_message`: the same template again answers the
    first message."""
    client_message_id = _check_client_message_id(client_message_id)
    name, language, parameters = _check_template(template_name, language_code, body_parameters)
    conversation = await _visible_conversation(session, principal, conversation_id)
    message = _new_outbound(
        principal,
        conversation,
        type="template",
        text=template_summary(name, language, parameters),
        payload=template_payload(name, language, parameters),
        client_message_id=client_message_id,
    )
    existing = await _existing(session, message)
    if existing is not None:
        return existing
    account = await check_recipient(session, conversation)
    await templates.check_sendable(session, conversation.account_id, name, language, parameters)
    if not service_window_open(conversation):
        await quotas.check_messaging_tier(
            session, account.id, account.messaging_limit_tier, conversation.id
        )
    await quotas.charge_template_send(limiter, principal)
    return await _queue(session, principal, broker, conversation, message)


async def start_conversation(
    session: AsyncSession,
    principal: Principal,
    broker: Broker,
    *,
    account_id: uuid.UUID,
    phone_number: str,
    contact_name: str | None,
    template_name: str,
    language_code: str,
    body_parameters: list[str],
    limiter: RateLimiter | None = None,
) -> Conversation:
    """Write first to a customer: find or create the contact of `phone_number` (typed by
    a person: weflux.services.phone_numbers' one rule), open their conversation with the
    number and queue the template in it, all in the caller's transaction.

    Every role may (Permission.START_CONVERSATIONS). A new conversation is assigned to
    whoever starts it, so an Agent keeps seeing it; an existing one keeps its assignee
    and is reopened when RESOLVED. NOT_FOUND for a number outside the workspace or
    disconnected; CONTACT_OPTED_OUT after a STOP (nothing is created then); CONFLICT when
    an Agent names a customer whose conversation is assigned to someone else;
    BAD_USER_INPUT for an invalid number or template; RATE_LIMITED over the quotas or
    the number's messaging tier (weflux.services.quotas).
    """
    principal.require(
        Permission.START_CONVERSATIONS, "Your role does not allow starting conversations"
    )
    name, language, parameters = _check_template(template_name, language_code, body_parameters)
    number = contacts.phone_number_input(phone_number)
    account = await session.get(WhatsAppAccount, account_id)
    if account is None or account.disconnected_at is not None:
        raise NotFound("WhatsApp account not found")
    await templates.check_sendable(session, account.id, name, language, parameters)
    contact, _ = await contacts.contact_to_write_to(session, number, contact_name)
    if contact.opted_out:
        raise ContactOptedOut(
            "This contact has opted out of messages (they sent STOP); nothing can be sent "
            "until they opt in again by sending START"
        )
    conversation = (
        await session.exec(
            select(Conversation).where(
                Conversation.contact_id == contact.id, Conversation.account_id == account.id
            )
        )
    ).first()
    if conversation is None:
        conversation = Conversation(
            org_id=principal.org_id,
            contact_id=contact.id,
            account_id=account.id,
            status=ConversationStatus.OPEN,
            assignee_membership_id=principal.membership_id,
        )
        try:
            async with session.begin_nested():
                session.add(conversation)
                await session.flush()
        except IntegrityError:
            raise Conflict(
                "This customer is already in a conversation you cannot see; ask the member "
                "it is assigned to, or a Manager"
            ) from None
    elif conversation.status == ConversationStatus.RESOLVED:
        conversation.status = ConversationStatus.OPEN
    if not service_window_open(conversation):
        await quotas.check_messaging_tier(
            session, account.id, account.messaging_limit_tier, conversation.id
        )
    await quotas.charge_template_send(limiter, principal)
    message = _new_outbound(
        principal,
        conversation,
        type="template",
        text=template_summary(name, language, parameters),
        payload=template_payload(name, language, parameters),
        client_message_id=None,
    )
    await _queue(session, principal, broker, conversation, message)
    return conversation
