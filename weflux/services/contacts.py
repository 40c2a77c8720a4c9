"""Contacts: the workspace's customers, listed, searched, created and renamed.

Reads go through the caller's scoped session: an Agent sees only the contacts of
conversations visible to them, without anything here asking.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Protocol

from sqlalchemy import and_, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.errors import BadUserInput, Conflict, NotFound
from weflux.models import Contact, utcnow
from weflux.pagination import Page, decode_keyset, encode_keyset, page_of, page_size
from weflux.services.conversations import (
    among,
    contact_matches,
    matches_by_subquery,
    matching_contact_ids,
    search_term,
)
from weflux.services.phone_numbers import INVALID_PHONE_NUMBER, e164

MAX_NAME = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _field_error(field: str, message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": field, "message": message}])


def phone_number_input(value: str) -> str:
    """A typed phone number in E.164 (weflux.services.phone_numbers.e164, the one rule),
    else BAD_USER_INPUT on `phoneNumber` with the one wording."""
    number = e164(value)
    if number is None:
        raise _field_error("phoneNumber", INVALID_PHONE_NUMBER)
    return number


def _clean_name(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip()
    if len(name) > MAX_NAME:
        raise _field_error("name", f"The name is at most {MAX_NAME} characters")
    if _CONTROL.search(name):
        raise _field_error("name", "The name contains control characters")
    return name or None


def name_by_team(contact: Contact, name: str | None) -> None:
    """Set (or, with None, remove) the team's name; without one `name` is the profile's."""
    contact.name_set_by_team = name is not None
    contact.name = name if name is not None else contact.profile_name


class NamedContact(Protocol):
    """What the name rules read and write: a Contact row, or the webhook's plain copy of
    one (weflux.services.ingest)."""

    name: str | None
    profile_name: str | None
    name_set_by_team: bool


def record_profile_name(contact: NamedContact, profile_name: str) -> bool:
    """Keep the latest WhatsApp profile name (never over the team's); whether it changed."""
    latest = profile_name[:MAX_NAME]
    if contact.profile_name == latest:
        return False
    contact.profile_name = latest
    if not contact.name_set_by_team:
        contact.name = latest
    return True


def _contact_cursor(row: Contact) -> str:
    return encode_keyset("contact", row.name, row.id)


def _after_contact(cursor: str) -> Any:
    name, row_id = decode_keyset("contact", cursor)
    name_column = col(Contact.name)
    id_column = col(Contact.id)
    if name is None:  # already among the unnamed contacts (sorted last)
        return and_(name_column.is_(None), id_column > row_id)
    return or_(
        name_column > name,
        and_(name_column == name, id_column > row_id),
        name_column.is_(None),
    )


async def list_contacts(
    session: AsyncSession,
    principal: Principal,
    *,
    first: int | None = None,
    after: str | None = None,
    search: str | None = None,
) -> Page[Contact]:
    """Visible contacts by name (unnamed last), keyset-paginated on (name, id).

    `search` matches name, profile name, phone number or WhatsApp id, case-insensitively.
    """
    size = page_size(first)
    term = search_term(search)
    query = select(Contact)
    if term is not None:
        candidates = await matching_contact_ids(session, term)
        if candidates is not None:
            query = query.where(contact_matches(term), among(col(Contact.id), candidates))
        elif (await session.connection()).dialect.name == "postgresql":
            # A common or short term: walk the name index (see matches_by_subquery).
            query = query.where(matches_by_subquery(term, col(Contact.id)))
        else:
            query = query.where(contact_matches(term))
    if after:
        query = query.where(_after_contact(after))
    query = query.order_by(col(Contact.name).asc().nulls_last(), col(Contact.id)).limit(size + 1)
    rows = (await session.exec(query)).all()
    return page_of(rows, size, _contact_cursor, has_previous_page=bool(after))


async def get_contact(session: AsyncSession, contact_id: uuid.UUID) -> Contact:
    """A visible contact, or NOT_FOUND."""
    row = await session.get(Contact, contact_id)
    if row is None:
        raise NotFound("Contact not found")
    return row


async def create_contact(
    session: AsyncSession, principal: Principal, phone_number: str, name: str | None
) -> Contact:
    """A contact keyed by its WhatsApp id (the E.164 digits); one per number (CONFLICT)."""
    principal.require(Permission.MANAGE_CONTACTS, "Your role cannot change contacts")
    number = phone_number_input(phone_number)
    digits = number.removeprefix("+")
    contact = Contact(wa_id=digits, phone_number=number)
    name_by_team(contact, _clean_name(name))
    existing = (await session.exec(select(Contact.id).where(col(Contact.wa_id) == digits))).first()
    if existing is not None:
        raise _conflict()
    session.add(contact)
    try:
        # A concurrent twin is caught by the unique index, not only by the look-up above.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise _conflict() from None
    return contact


async def contact_to_write_to(
    session: AsyncSession, phone_number: str, name: str | None
) -> tuple[Contact, bool]:
    """The contact of an E.164 number, created (named by the team) when there is none;
    and whether it was created. CONFLICT when the number belongs to a contact the
    caller cannot see (an Agent's, in a conversation assigned to someone else)."""
    digits = phone_number.removeprefix("+")
    cleaned = _clean_name(name)
    found = (await session.exec(select(Contact).where(col(Contact.wa_id) == digits))).first()
    if found is not None:
        return found, False
    contact = Contact(wa_id=digits, phone_number=phone_number)
    name_by_team(contact, cleaned)
    try:
        async with session.begin_nested():
            session.add(contact)
            await session.flush()
    except IntegrityError:
        raise Conflict(
            "This customer is already in a conversation you cannot see; ask the member "
            "it is assigned to, or a Manager",
            details=[{"field": "phoneNumber", "message": "already in another conversation"}],
        ) from None
    return contact, True


def _conflict() -> Conflict:
    message = "A contact with this phone number exists already"
    return Conflict(message, details=[{"field": "phoneNumber", "message": message}])


async def update_contact(
    session: AsyncSession, principal: Principal, contact_id: uuid.UUID, *, name: str | None
) -> Contact:
    """Give a contact the team's name; None or blank removes it (the profile name shows)."""
    principal.require(Permission.MANAGE_CONTACTS, "Your role cannot change contacts")
    contact = await get_contact(session, contact_id)
    before = (contact.name, contact.name_set_by_team)
    name_by_team(contact, _clean_name(name))
    if (contact.name, contact.name_set_by_team) != before:
        contact.updated_at = utcnow()
        session.add(contact)
        await session.flush()
    return contact
