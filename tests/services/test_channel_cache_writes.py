"""Which writes of `whatsapp_accounts` announce a change (weflux.services.channel_cache).

Heard on a real `Database` (both engines) through its `channels_changed`, counted: each
unit of work below is one write, committed, announced at most once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import delete, update
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


WRITES: dict[str, tuple[Write, int]] = {
    "bulk by primary key of a quiet column": (_by_primary_key(status_detail="checked"), 0),
    "bulk by primary key of a cached column": (_by_primary_key(webhook_key="moved-in-bulk"), 1),
    "Core DELETE": (
        lambda s, i: s.exec(delete(WhatsAppAccount).where(col(WhatsAppAccount.id) == i)),
        1,
    ),
    "ORM delete": (_orm_delete, 1),
    "Core UPDATE of a quiet and a cached column": (
        lambda s, i: s.exec(
            update(WhatsAppAccount).values(health_checked_at=utcnow(), display_phone_number="1")
        ),
        1,
    ),
}


@pytest.mark.parametrize("what", list(WRITES))
async def test_a_write_announces_only_what_may_change_a_cached_answer(
    db: Database, org: Organization, what: str
) -> None:
    """Given a number, when one kind of write of it commits,
    then a change is announced exactly when a cached answer may have changed."""
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
    announced: list[None] = []

    async def heard() -> None:
        announced.append(None)

    db.channels_changed = heard
    write, expected = WRITES[what]
    async with db.session(org.id) as session:
        await write(session, account.id)
    assert len(announced) == expected
