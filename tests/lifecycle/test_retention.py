"""Retention: old messages and old raw webhook bodies go daily, in batches."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.principals import principal_of
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.errors import BadUserInput
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_retention
from weflux.models import Message, WebhookEvent, WebhookEventStatus, utcnow
from weflux.services.audit import RequestMeta

DAY = timedelta(days=1)


async def _policy(db: Database, actor: Actor, messages: int | None, bodies: int | None) -> None:
    async with db.session(actor.org_id) as session:
        await lifecycle_requests.update_retention_policy(
            session,
            principal_of(actor),
            RequestMeta(),
            message_retention_days=messages,
            webhook_payload_retention_days=bodies,
        )


async def _body(db: Database, processed_at: datetime | None) -> uuid.UUID:
    event_id = uuid.uuid4()
    async with db.session(webhook_event=event_id) as session:
        session.add(
            WebhookEvent(
                id=event_id,
                body=b"{}",
                body_sha256=hashlib.sha256(b"{}").hexdigest(),
                status=WebhookEventStatus.PROCESSED if processed_at else WebhookEventStatus.FAILED,
                processed_at=processed_at,
            )
        )
    return event_id


async def test_old_messages_and_bodies_go_and_the_rest_stays(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given a workspace keeping messages 10 days and another keeping them forever but raw
    bodies only 7 days,
    when the retention job runs,
    then the first loses its messages older than 10 days in batches, the second keeps
    all, raw bodies processed more than 7 days ago go (the shortest period applies to
    every body), unprocessed ones stay; and a second run the same day does nothing."""
    now = utcnow()
    await _policy(db, admin, 10, None)
    await _policy(db, other_admin, None, 7)
    kept: list[uuid.UUID] = []
    for actor in (admin, other_admin):
        async with db.session(actor.org_id) as session:
            conversation = await create_conversation(session)
            for _ in range(5):
                await create_message(session, conversation, created_at=now - 20 * DAY)
            recent = await create_message(session, conversation, created_at=now - DAY)
            kept.append(recent.id)
    old_body = await _body(db, now - 8 * DAY)
    new_body = await _body(db, now - DAY)
    failed_body = await _body(db, None)
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    assert await run_retention(lifecycle, now=now) == 6

    async with db.session(admin.org_id) as session:
        assert [m.id for m in (await session.exec(select(Message))).all()] == [kept[0]]
    async with db.session(other_admin.org_id) as session:
        assert len((await session.exec(select(Message))).all()) == 6
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM webhook_events"))).all()
    assert {uuid.UUID(str(row[0])) for row in rows} == {new_body, failed_body}
    assert old_body not in {uuid.UUID(str(row[0])) for row in rows}
    assert await run_retention(lifecycle, now=now + DAY / 2) == 0


@pytest.mark.parametrize(("messages", "bodies"), [(0, None), (None, 31), (None, 0)])
async def test_a_policy_out_of_range_is_refused(
    db: Database, admin: Actor, messages: int | None, bodies: int | None
) -> None:
    """Given days out of range, when the policy is set, then BAD_USER_INPUT."""
    with pytest.raises(BadUserInput):
        await _policy(db, admin, messages, bodies)
