"""The senders of inbound messages: their contacts and conversations, found or created."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select

from weflux.auth.scoping import core_scope, with_feed_highest
from weflux.models import new_id
from weflux.services.contacts import record_profile_name
from weflux.services.ingest.statements import _CONTACTS, _CONVERSATIONS, _lookup_sync
from weflux.sqlite_driver import inline
from weflux.whatsapp.parser import InboundMessage


def _contact_key(message: InboundMessage) -> tuple[str | None, str | None]:
    profile = message.contact
    user_id = message.from_user_id or (profile.user_id if profile else None)
    wa_id = message.from_wa_id or (profile.wa_id if profile else None)
    return user_id, wa_id


# The stored senders (by `user_id` or `wa_id`) and their conversations, in one statement:
# a contact with two numbers' conversations comes twice. Each branch of the OR repeats
# `erased_at IS NULL`, the condition of the partial unique indexes on (org_id, user_id) and
# (org_id, wa_id): without it SQLite's planner cannot use them for an OR and reads every
# contact of the workspace by `ix_contacts_org_id_name`. With it: a unique-index lookup
# per id, the workspace's highest feed position by its covering indexes, and the
# contacts' conversations by the unique (org_id, contact_id, account_id): bounded by the
# event's senders, so it may run inline (weflux.sqlite_driver; with many senders, past
# INLINE_MAX_PARAMETERS, it takes its hand-off).
# Run with `fixed_lists` (one parameter per id, a compiled form per list length: no SQL
# re-rendered per execution).
_SENDERS = (
    select(
        _CONTACTS.c.id,
        _CONTACTS.c.user_id,
        _CONTACTS.c.wa_id,
        _CONTACTS.c.username,
        _CONTACTS.c.name,
        _CONTACTS.c.profile_name,
        _CONTACTS.c.name_set_by_team,
        _CONTACTS.c.phone_number,
        _CONTACTS.c.opted_out,
        _CONTACTS.c.opted_out_at,
        _CONTACTS.c.updated_at,
        _CONVERSATIONS.c.id.label("conversation_id"),
        _CONVERSATIONS.c.account_id,
        _CONVERSATIONS.c.last_message_id,
        _CONVERSATIONS.c.last_message_at,
        _CONVERSATIONS.c.last_inbound_at,
    )
    .select_from(
        _CONTACTS.outerjoin(
            _CONVERSATIONS,
            and_(
                _CONVERSATIONS.c.contact_id == _CONTACTS.c.id,
                core_scope(_CONVERSATIONS),
            ),
        )
    )
    .where(
        core_scope(_CONTACTS),
        or_(
            and_(
                _CONTACTS.c.user_id.in_(bindparam("user_ids", expanding=True)),
                _CONTACTS.c.erased_at.is_(None),
            ),
            and_(
                _CONTACTS.c.wa_id.in_(bindparam("wa_ids", expanding=True)),
                _CONTACTS.c.erased_at.is_(None),
            ),
        ),
    )
)
# SQLite: the same, with the workspace's highest feed position (one statement fewer).
_SENDERS_AND_FEED = inline(with_feed_highest(_SENDERS))


@dataclass(slots=True)
class _Sender:
    """A contact as the webhook reads and writes it (a plain copy: no ORM instance)."""

    id: uuid.UUID
    user_id: str | None
    wa_id: str | None
    username: str | None = None
    name: str | None = None
    profile_name: str | None = None
    name_set_by_team: bool = False
    phone_number: str | None = None
    opted_out: bool = False
    opted_out_at: datetime | None = None
    updated_at: datetime | None = None
    new: bool = False
    changed: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "wa_id": self.wa_id,
            "username": self.username,
            "name": self.name,
            "profile_name": self.profile_name,
            "phone_number": self.phone_number,
            "opted_out": self.opted_out,
            "opted_out_at": self.opted_out_at,
            "updated_at": self.updated_at,
        }


@dataclass(slots=True)
class _Thread:
    """A conversation as the webhook reads and writes it."""

    id: uuid.UUID
    contact_id: uuid.UUID
    account_id: uuid.UUID
    last_message_id: uuid.UUID | None = None
    last_message_at: datetime | None = None
    last_inbound_at: datetime | None = None
    new: bool = False
    added: int = 0


def _senders(
    connection: Connection,
    org_id: uuid.UUID,
    scope: dict[str, Any],
    messages: Sequence[InboundMessage],
) -> tuple[list[_Sender], list[_Thread], int | None]:
    """The stored senders (by `user_id` or `wa_id`), their conversations and, on SQLite,
    the workspace's highest feed position. In SQLAlchemy's greenlet (`run_sync`)."""
    keys = {_contact_key(m) for m in messages}
    params = {
        "user_ids": [u for u, _ in keys if u],
        "wa_ids": [w for _, w in keys if w],
        **scope,
    }
    rows, highest = _lookup_sync(connection, org_id, _SENDERS, _SENDERS_AND_FEED, params)
    contacts: dict[uuid.UUID, _Sender] = {}
    threads: list[_Thread] = []
    for row in rows:
        if row.id is None:
            continue  # SQLite's one row of the feed position alone
        if row.id not in contacts:
            contacts[row.id] = _Sender(
                id=row.id,
                user_id=row.user_id,
                wa_id=row.wa_id,
                username=row.username,
                name=row.name,
                profile_name=row.profile_name,
                name_set_by_team=row.name_set_by_team,
                phone_number=row.phone_number,
                opted_out=row.opted_out,
                opted_out_at=row.opted_out_at,
                updated_at=row.updated_at,
            )
        if row.conversation_id is not None:
            threads.append(
                _Thread(
                    id=row.conversation_id,
                    contact_id=row.id,
                    account_id=row.account_id,
                    last_message_id=row.last_message_id,
                    last_message_at=row.last_message_at,
                    last_inbound_at=row.last_inbound_at,
                )
            )
    return list(contacts.values()), threads, highest


def _contacts(
    messages: Sequence[InboundMessage], existing: Sequence[_Sender], now: datetime
) -> dict[tuple[str | None, str | None], _Sender]:
    """Find or create the senders: by `user_id` when known, else by `wa_id`."""
    by_user = {c.user_id: c for c in existing if c.user_id}
    by_wa = {c.wa_id: c for c in existing if c.wa_id}
    found: dict[tuple[str | None, str | None], _Sender] = {}
    for message in messages:
        key = _contact_key(message)
        if key in found:
            contact = found[key]
        else:
            user_id, wa_id = key
            contact_or_none = (by_user.get(user_id) if user_id else None) or (
                by_wa.get(wa_id) if wa_id else None
            )
            if contact_or_none is None:
                contact_or_none = _Sender(
                    id=new_id(),
                    user_id=user_id,
                    wa_id=wa_id,
                    phone_number=f"+{wa_id}" if wa_id else None,
                    updated_at=now,
                    new=True,
                )
                if user_id:
                    by_user[user_id] = contact_or_none
                if wa_id:
                    by_wa[wa_id] = contact_or_none
            contact = contact_or_none
            found[key] = contact
        profile = message.contact
        profile_name = profile.name if profile else None
        if profile_name and record_profile_name(contact, profile_name):
            contact.updated_at = now
            contact.changed = True
        username = message.from_username or (profile.username if profile else None)
        for attribute, value in (
            ("username", username),
            ("user_id", key[0]),
            ("wa_id", key[1]),
        ):
            if value and getattr(contact, attribute) != value:
                setattr(contact, attribute, value)
                contact.updated_at = now
                contact.changed = True
        if contact.wa_id and not contact.phone_number:
            contact.phone_number = f"+{contact.wa_id}"
            contact.changed = True
    return found


def _conversations(
    pairs: Iterable[tuple[uuid.UUID, uuid.UUID]], existing: Sequence[_Thread]
) -> dict[tuple[uuid.UUID, uuid.UUID], _Thread]:
    """One conversation per contact x number; found (`_senders`) or created."""
    found = {(c.contact_id, c.account_id): c for c in existing}
    for contact_id, account_id in pairs:
        if (contact_id, account_id) not in found:
            found[(contact_id, account_id)] = _Thread(
                id=new_id(), contact_id=contact_id, account_id=account_id, new=True
            )
    return found
