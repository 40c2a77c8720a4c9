"""Which writes of `whatsapp_accounts` announce a change (weflux.services.channel_cache).

Heard on a real `Database` (both engines) through its `channels_changed`, counted: each
unit of work below is one write, committed, announced at most once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import and_, delete, or_, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.factories import create_whatsapp_account
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount, utcnow

Write = Callable[[AsyncSession, uuid.UUID], Awaitable[object]]


def _by_primary_key(**column: str) -> Write:
    """The ORM's bulk UPDATE by primary key: rows of values, each with its `id`."""

    async def write(session: AsyncSession, account_id: uuid.UUID) -> None:
        await session.execute(update(WhatsAppAccount), [{"id": account_id, **column}])

    return write


async def _orm_delete(session: AsyncSession, account_id: uuid.UUID) -> None:
    await session.delete(await session.get(WhatsAppAccount, account_id))


def _orm(**values: object) -> Write:
    async def write(session: AsyncSession, account_id: uuid.UUID) -> None:
        account = await session.get(WhatsAppAccount, account_id)
        for name, value in values.items():
            setattr(account, name, value)

    return write


def _core_by_id(where: Callable[[uuid.UUID], object], **values: object) -> Write:
    return lambda s, i: s.exec(update(WhatsAppAccount).where(where(i)).values(**values))  # type: ignore[arg-type]


NONE, NAMED, ALL = "nothing", "the number", "every number"
# What each write announces: nothing, its number (evicts that number's answers alone), or
# every number (anything may have changed: evicts all, the live keys' too).
WRITES: dict[str, tuple[Write, str]] = {
    "bulk by primary key of a quiet column": (_by_primary_key(status_detail="checked"), NONE),
    "bulk by primary key of a cached column": (_by_primary_key(webhook_key="moved-in-bulk"), ALL),
    "bulk by primary key of a named column": (
        _by_primary_key(display_phone_number="+1 555 0100"),
        NAMED,
    ),
    "Core DELETE by id": (
        lambda s, i: s.exec(delete(WhatsAppAccount).where(col(WhatsAppAccount.id) == i)),
        NAMED,
    ),
    "Core DELETE of the workspace's": (lambda s, _i: s.exec(delete(WhatsAppAccount)), ALL),
    "ORM delete": (_orm_delete, NAMED),
    "Core UPDATE of a quiet and a cached column": (
        lambda s, i: s.exec(
            update(WhatsAppAccount).values(health_checked_at=utcnow(), display_phone_number="1")
        ),
        ALL,
    ),
    "Core UPDATE of a secret by id": (
        _core_by_id(lambda i: col(WhatsAppAccount.id) == i, app_secret_enc=None),
        NAMED,
    ),
    "Core UPDATE of a secret by ids": (
        _core_by_id(lambda i: col(WhatsAppAccount.id).in_([i]), app_secret_enc=None),
        NAMED,
    ),
    "Core UPDATE of a secret by id or another column": (
        _core_by_id(
            lambda i: or_(col(WhatsAppAccount.id) == i, col(WhatsAppAccount.sandbox)),
            app_secret_enc=None,
        ),
        ALL,
    ),
    "Core UPDATE of a secret by id and another column": (
        _core_by_id(
            lambda i: and_(col(WhatsAppAccount.id) == i, col(WhatsAppAccount.sandbox).is_(False)),
            app_secret_enc=None,
        ),
        NAMED,
    ),
    "Core disconnection by id": (
        _core_by_id(lambda i: col(WhatsAppAccount.id) == i, disconnected_at=utcnow()),
        NAMED,
    ),
    "Core disconnection undone by id": (
        _core_by_id(lambda i: col(WhatsAppAccount.id) == i, disconnected_at=None),
        ALL,
    ),
    "Core UPDATE of the key by id": (
        _core_by_id(lambda i: col(WhatsAppAccount.id) == i, webhook_key="moved-by-id"),
        ALL,
    ),
    "ORM disconnection": (_orm(disconnected_at=utcnow()), NAMED),
    "ORM verify token": (_orm(webhook_verify_token_enc="sealed"), NAMED),
    "ORM phone number id": (_orm(phone_number_id="1090000000099"), ALL),
}


@pytest.mark.parametrize("what", list(WRITES))
async def test_a_write_announces_only_what_may_change_a_cached_answer(
    db: Database, org: Organization, what: str
) -> None:
    """Given a number, when one kind of write of it commits,
    then a change is announced exactly when a cached answer may have changed, naming the
    number when the write says it and adds no answer (else every number)."""
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
    announced: list[str] = []

    async def heard(ids: frozenset[uuid.UUID] | None) -> None:
        announced.append(ALL if ids is None else NAMED if ids == {account.id} else repr(ids))

    db.channels_changed = heard
    write, expected = WRITES[what]
    async with db.session(org.id) as session:
        await write(session, account.id)
    assert announced == ([] if expected == NONE else [expected])
