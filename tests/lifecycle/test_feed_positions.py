"""Purges and the change feed: a deleted position is never handed out again, and removals
expire with the daily retention, leaving the mark `conversationRemoved(after:)` checks."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import col, select

from tests.fixtures.factories import Actor, create_conversation, create_message
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure
from weflux.lifecycle.worker import Lifecycle, run_retention
from weflux.models import (
    Contact,
    Conversation,
    ConversationRemoval,
    Message,
    Organization,
    RemovalReason,
    utcnow,
)

DAY = timedelta(days=1)


async def _highest(db: Database, actor: Actor) -> int:
    """The workspace's highest position held by a row now."""
    highest = 0
    async with db.session(actor.org_id) as session:
        for model in (Conversation, Message, ConversationRemoval):
            found = (await session.exec(select(func.max(col(model.update_seq))))).first()
            highest = max(highest, int(found or 0))
    return highest


def _lifecycle(db: Database, **overrides: object) -> Lifecycle:
    return Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=1, **overrides)  # type: ignore[arg-type]


async def test_an_erased_contacts_positions_are_never_handed_out_again(
    db: Database, admin: Actor
) -> None:
    """Given two contacts' conversations, the second erased (its tombstone and its removal
    hold the workspace's highest positions),
    when the erasure is purged, the removal expires (40 days later) and a message arrives
    in the first conversation,
    then the new message's position is above every one handed out: a subscriber resuming
    after the removal's position receives it."""
    async with db.session(admin.org_id) as session:
        kept = await create_conversation(session)
        await create_message(session, kept)
        erased = await create_conversation(session)
        await create_message(session, erased)
    async with db.session(admin.org_id) as session:
        contact = await session.get(Contact, erased.contact_id)
        assert contact is not None
        await erasure.tombstone_contact(session, contact, now=utcnow() - 40 * DAY)
    handed_out = await _highest(db, admin)
    async with db.session(admin.org_id) as session:
        removal = (await session.exec(select(ConversationRemoval))).one()
        assert removal.update_seq == handed_out
        removal.created_at = utcnow() - 40 * DAY
        session.add(removal)

    await erasure.purge_contact(db, admin.org_id, erased.contact_id, batch=1)
    await run_retention(_lifecycle(db, conversation_removal_retention=30 * DAY))

    assert await _highest(db, admin) < handed_out  # the rows holding them are gone
    async with db.session(admin.org_id) as session:
        conversation = await session.get(Conversation, kept.id)
        assert conversation is not None
        fresh = await create_message(session, conversation, touch_conversation=False)
    assert fresh.update_seq > handed_out


async def test_retention_deleting_the_newest_position_does_not_let_it_be_reused(
    db: Database, admin: Actor
) -> None:
    """Given a workspace keeping messages 10 days whose most recently changed row is a
    message 20 days old,
    when the daily retention deletes it and a new message is written,
    then the new message's position is above the deleted message's."""
    now = utcnow()
    async with db.session(admin.org_id) as session:
        organization = await session.get(Organization, admin.org_id)
        assert organization is not None
        organization.message_retention_days = 10
        session.add(organization)
        conversation = await create_conversation(session)
        old = await create_message(session, conversation, created_at=now - 20 * DAY)
    async with db.session(admin.org_id) as session:
        message = await session.get(Message, old.id)
        assert message is not None
        message.text = "edited"  # a visible change: the message takes the newest position
        session.add(message)
    async with db.session(admin.org_id) as session:
        message = await session.get(Message, old.id)
        assert message is not None
        deleted_position = message.update_seq
    assert deleted_position == await _highest(db, admin)

    await run_retention(_lifecycle(db), now=now)

    async with db.session(admin.org_id) as session:
        assert await session.get(Message, old.id) is None
        fresh = await create_message(
            session, conversation, created_at=now, touch_conversation=False
        )
    assert fresh.update_seq > deleted_position


async def _removal(db: Database, actor: Actor, age: timedelta) -> int:
    """A removal made `age` ago; its position."""
    async with db.session(actor.org_id) as session:
        conversation = await create_conversation(session)
        removal = ConversationRemoval(
            org_id=actor.org_id,
            conversation_id=conversation.id,
            reason=RemovalReason.ERASED.value,
            created_at=utcnow() - age,
        )
        session.add(removal)
        await session.flush()
        return removal.update_seq


async def test_old_removals_expire_and_leave_the_highest_position_deleted(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given three removals 40 days old, one a day old, and another workspace's recent one,
    when the daily retention runs (removals kept 30 days, one per batch),
    then the three old ones go, `removals_pruned_through` is the highest of their
    positions, the recent one stays, and the other workspace keeps its own."""
    positions = [await _removal(db, admin, age * DAY) for age in (40, 40, 40, 1)]
    await _removal(db, other_admin, DAY)

    await run_retention(_lifecycle(db, conversation_removal_retention=30 * DAY))

    async with db.session(admin.org_id) as session:
        left = (await session.exec(select(ConversationRemoval.update_seq))).all()
        organization = await session.get(Organization, admin.org_id)
        assert organization is not None
    assert list(left) == [positions[3]]
    assert organization.removals_pruned_through == max(positions[:3])
    async with db.session(other_admin.org_id) as session:
        assert len((await session.exec(select(ConversationRemoval))).all()) == 1
        other = await session.get(Organization, other_admin.org_id)
        assert other is not None
    assert other.removals_pruned_through == 0
